#!/usr/bin/env bash
# Generate images with curl against `local-ai serve`, as in LocalAI's docs.
#
#   local-ai serve --models-path ./models &        # the model "stablediffusion" must be installed
#   examples/curl_generate.sh                      # or: BASE_URL=http://host:8080 API_KEY=... examples/curl_generate.sh
#
# Needs curl; python3 decodes the b64_json answer into a PNG file.
set -euo pipefail

BASE_URL="${BASE_URL:-http://127.0.0.1:8080}"
AUTH=()
if [[ -n "${API_KEY:-}" ]]; then
  AUTH=(-H "Authorization: Bearer ${API_KEY}")
fi

echo "== health"
curl -fsS "${AUTH[@]}" "${BASE_URL}/readyz"; echo

echo "== installed models"
curl -fsS "${AUTH[@]}" "${BASE_URL}/v1/models"; echo

echo "== URL mode (LocalAI's docs body: '|' splits off the negative prompt; step and mode are LocalAI extensions)"
curl -fsS "${AUTH[@]}" "${BASE_URL}/v1/images/generations" \
  -H "Content-Type: application/json" \
  -d '{
    "prompt": "floating hair, portrait, ((loli)), ((one girl)), cute face, hidden hands, asymmetrical bangs, beautiful detailed eyes, eye shadow, hair ornament, ribbons, bowties, buttons, pleated skirt, (((masterpiece))), ((best quality)), colorful|((part of the head)), ((((mutated hands and fingers)))), deformed, blurry, bad anatomy, disfigured, poorly drawn face, mutation, mutated, extra limb, ugly, poorly drawn hands, missing limb, blurry, floating limbs, disconnected limbs, malformed hands, blur, out of focus, long neck, long body, Octane renderer, lowres, bad anatomy, bad hands, text",
    "mode": 2,
    "step": 15,
    "seed": 9000,
    "size": "256x256",
    "n": 1
  }'
echo

echo "== b64_json mode with a separate negative_prompt, saved to sea-otter.png"
curl -fsS "${AUTH[@]}" "${BASE_URL}/v1/images/generations" \
  -H "Content-Type: application/json" \
  -d '{"prompt": "A cute baby sea otter", "negative_prompt": "blurry", "size": "256x256",
       "step": 15, "seed": 42, "response_format": "b64_json"}' \
  | python3 -c 'import base64, json, sys; item = json.load(sys.stdin)["data"][0]; open("sea-otter.png", "wb").write(base64.b64decode(item["b64_json"])); print("seed", item["seed"], "-> sea-otter.png")'

echo "== an invalid size gives an OpenAI-shaped 400 naming the field"
curl -sS "${AUTH[@]}" "${BASE_URL}/v1/images/generations" \
  -H "Content-Type: application/json" -d '{"prompt": "x", "size": "100x100"}'
echo
