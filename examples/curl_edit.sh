#!/bin/sh
# Edit an image with curl (multipart, as OpenAI's /v1/images/edits takes it).
# The server: local-ai serve   (default http://127.0.0.1:8080)
set -eu
URL="${URL:-http://127.0.0.1:8080}"

# Inpainting: transparent pixels of mask.png (or white ones, in a mask without alpha) are repainted.
curl -sS "$URL/v1/images/edits" \
  -F image=@photo.png -F mask=@mask.png \
  -F prompt="a red door" -F response_format=b64_json \
  -F step=15 -F seed=42 -F strength=0.75 -F mask_blur=4 \
  | python3 -c 'import base64,json,sys; open("edited.png","wb").write(base64.b64decode(json.load(sys.stdin)["data"][0]["b64_json"]))'

# Img2img of the whole picture (no mask), as JPEG; the output size follows the photo (fitted to 1024).
curl -sS "$URL/v1/images/edits" -F image=@photo.jpg -F prompt="in watercolor" \
  -F strength=0.6 -F output_format=jpeg -F response_format=b64_json -o edit.json

# Variations: an empty prompt at strength 0.5, seeds s, s+1.
curl -sS "$URL/v1/images/variations" -F image=@photo.png -F n=2 -F seed=7 -o variations.json
