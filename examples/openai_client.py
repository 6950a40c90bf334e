"""Generate images with the official ``openai`` Python client against ``local-ai serve``.

    local-ai serve --models-path ./models &
    python examples/openai_client.py            # env: LOCALAI_URL (default http://127.0.0.1:8080/v1), API_KEY

The client needs some API key even when the server has none; any string works then.
LocalAI's extra fields (``step``, ``seed``, ``mode``, ``negative_prompt``) travel in ``extra_body``;
each returned image carries the ``seed`` it used as an extra field.
"""

from __future__ import annotations

import base64
import os
from pathlib import Path

import openai


def main() -> None:
    """Generate one image as base64 (saved to disk) and one as a URL."""
    client = openai.OpenAI(
        base_url=os.environ.get("LOCALAI_URL", "http://127.0.0.1:8080/v1"),
        api_key=os.environ.get("API_KEY", "not-needed"),
        timeout=1800,  # CPU generation takes minutes; the default 600 s can be too short for big n
    )
    result = client.images.generate(
        model="stablediffusion",
        prompt="a lighthouse on a cliff at sunset, oil painting",
        size="256x256",
        n=2,
        response_format="b64_json",
        extra_body={"step": 15, "seed": 1234, "mode": 1, "negative_prompt": "blurry, lowres"},
    )
    for image in result.data:
        seed = (image.model_extra or {}).get("seed")
        path = Path(f"lighthouse-{seed}.png")
        path.write_bytes(base64.b64decode(image.b64_json or ""))
        print(f"seed {seed} -> {path}")

    result = client.images.generate(prompt="a red fox in the snow", size="256x256", extra_body={"step": 10})
    print("url:", result.data[0].url)

    try:
        client.images.generate(prompt="x", size="100x100")
    except openai.BadRequestError as err:  # a 400 is never retried by the client
        print("rejected:", err.param, "-", err.message)


if __name__ == "__main__":
    main()
