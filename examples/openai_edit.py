"""Edit images with the official ``openai`` client (pip install openai) against ``local-ai serve``."""

from __future__ import annotations

import base64

from openai import OpenAI

client = OpenAI(base_url="http://127.0.0.1:8080/v1", api_key="unused")

# Inpainting: the mask's transparent pixels are repainted (OpenAI's rule); the rest comes back unchanged.
with open("photo.png", "rb") as image, open("mask.png", "rb") as mask:
    result = client.images.edit(
        image=image,
        mask=mask,
        prompt="a red door",
        response_format="b64_json",
        extra_body={"step": 15, "seed": 42, "strength": 0.75},
    )
with open("edited.png", "wb") as out:
    out.write(base64.b64decode(result.data[0].b64_json))

# Several images send image[]; the first one is edited (the others are ignored, with a warning header).
with open("photo.jpg", "rb") as first:
    result = client.images.edit(image=[first], prompt="in watercolor", response_format="b64_json")

# Variations: img2img with an empty prompt at strength 0.5; seeds s, s+1, ...
with open("photo.png", "rb") as image:
    result = client.images.create_variation(image=image, n=2, response_format="b64_json")
print([item.model_extra["seed"] for item in result.data])
