"""A generation job as plain JSON for a broker: the admitted request, the edit's images, the result, the error.

Nothing from the broker is unpickled: the API writes ``job_payload`` (version ``PAYLOAD_VERSION``), a worker
rebuilds the request with ``request_from`` (the same dataclass, checked again against the worker's limits)
and the edit with ``edit_from`` (the input image and mask as lossless PNGs decoded by the intake's
``decode_image``). The worker answers ``result_payload`` (PNG bytes in base64 and the worker's name) or
``error_payload`` (the typed library error by class name), which the API turns back into images or the
same typed error with ``images_from`` / ``error_from``.
"""

from __future__ import annotations

import base64
import io
from dataclasses import asdict, fields
from typing import Any

from PIL import Image

from localai_sd import errors
from localai_sd.errors import InvalidRequest, LocalAISDError
from localai_sd.pipeline.images_in import DecodedImage, decode_image
from localai_sd.pipeline.img2img import EditSpec
from localai_sd.pipeline.pipeline import GeneratedImage
from localai_sd.pipeline.request import GenerationRequest, Limits, check_limits

PAYLOAD_VERSION = 1
EDIT_SETTINGS = ("strength", "mask_blur", "inpaint_only_masked", "padding", "mask_invert")


def b64(data: bytes) -> str:
    """Bytes as ASCII base64."""
    return base64.b64encode(data).decode("ascii")


def image_png(image: DecodedImage) -> bytes:
    """A lossless PNG of a decoded input image (RGBA when it has alpha): ``decode_image`` gives it back."""
    picture = Image.fromarray(image.rgb)
    if image.alpha is not None:
        picture = picture.convert("RGBA")
        picture.putalpha(Image.fromarray(image.alpha))
    out = io.BytesIO()
    picture.save(out, format="PNG", compress_level=1)
    return out.getvalue()


def edit_payload(edit: EditSpec | None) -> dict[str, Any] | None:
    """The edit's images as PNG base64 and its settings; None for txt2img."""
    if edit is None:
        return None
    data: dict[str, Any] = {key: getattr(edit, key) for key in EDIT_SETTINGS}
    data["image"] = b64(image_png(edit.image))
    data["mask"] = None if edit.mask is None else b64(image_png(edit.mask))
    return data


def job_payload(
    model: str,
    request: GenerationRequest,
    edit: EditSpec | None = None,
    *,
    keep_previews: frozenset[int] = frozenset(),
    previews: bool = True,
) -> dict[str, Any]:
    """The JSON a worker needs to run the job: model name, request fields, edit, which previews to keep."""
    return {
        "v": PAYLOAD_VERSION,
        "model": model,
        "request": asdict(request),
        "edit": edit_payload(edit),
        "keep_previews": sorted(keep_previews),
        "previews": previews,
    }


def check_version(payload: dict[str, Any]) -> None:
    """InvalidRequest unless the payload has the version this code reads."""
    if payload.get("v") != PAYLOAD_VERSION:
        raise InvalidRequest(
            f"job payload version {payload.get('v')!r} is not {PAYLOAD_VERSION}: "
            "run the same localai-sd version on the API and the workers",
            code="payload_version",
        )


def request_from(data: dict[str, Any], limits: Limits) -> GenerationRequest:
    """The request a payload carries, field by field (unknown fields refused), within ``limits``."""
    names = {f.name for f in fields(GenerationRequest)}
    if set(data) != names:
        raise InvalidRequest(f"job payload fields {sorted(set(data) ^ names)} do not match this version")
    values = dict(data)
    if values["guidance_interval"] is not None:
        values["guidance_interval"] = tuple(values["guidance_interval"])
    request = GenerationRequest(**values)
    check_limits(request, limits)
    return request


def edit_from(data: dict[str, Any] | None) -> EditSpec | None:
    """The edit a payload carries, decoded with the intake's ``decode_image``; None for txt2img."""
    if data is None:
        return None
    image = decode_image(base64.b64decode(data["image"]), param="image")
    mask = None if data["mask"] is None else decode_image(base64.b64decode(data["mask"]), param="mask")
    return EditSpec(image, mask, **{key: data[key] for key in EDIT_SETTINGS})


def result_payload(images: list[GeneratedImage], worker: str) -> dict[str, Any]:
    """A finished job's answer: each image's PNG (base64), seed, size, infotext and warnings; who ran it."""
    items = [
        {
            "png": b64(image.png),
            "seed": image.seed,
            "width": image.width,
            "height": image.height,
            "parameters": image.parameters,
            "warnings": list(image.warnings),
        }
        for image in images
    ]
    return {"v": PAYLOAD_VERSION, "worker": worker, "images": items}


def images_from(result: dict[str, Any]) -> list[GeneratedImage]:
    """The images of a ``result_payload``; the typed error again for an ``error_payload``."""
    if "error" in result:
        raise error_from(result["error"])
    return [
        GeneratedImage(
            base64.b64decode(item["png"]),
            int(item["seed"]),
            int(item["width"]),
            int(item["height"]),
            str(item["parameters"]),
            tuple(item["warnings"]),
        )
        for item in result["images"]
    ]


def error_payload(exc: LocalAISDError, worker: str) -> dict[str, Any]:
    """A failed job's answer: the library error's class name, message, param and code."""
    error = {"class": type(exc).__name__, "message": exc.message, "param": exc.param, "code": exc.code}
    return {"v": PAYLOAD_VERSION, "worker": worker, "error": error}


def error_class(name: str) -> type[LocalAISDError]:
    """The library error class called ``name`` (``localai_sd.errors`` only), else the base class."""
    cls = getattr(errors, name, None)
    return cls if isinstance(cls, type) and issubclass(cls, LocalAISDError) else LocalAISDError


def error_from(data: dict[str, Any]) -> LocalAISDError:
    """The typed error an ``error_payload`` names, with its message, param and code."""
    cls = error_class(str(data.get("class")))
    exc = cls.__new__(cls)
    LocalAISDError.__init__(exc, str(data.get("message")), param=data.get("param"), code=data.get("code"))
    return exc


def error_for_code(code: str | None) -> type[LocalAISDError]:
    """The library error class whose ``code`` is ``code`` (for an error event), else the base class."""
    for value in vars(errors).values():
        if isinstance(value, type) and issubclass(value, LocalAISDError) and code and value.code == code:
            return value
    return LocalAISDError
