"""Image inputs of the edit routes: the multipart form (``image`` / ``image[]``, ``mask``, text fields) and
LocalAI's ``file`` field (base64 or a ``data:`` URL; a URL is never fetched: that would be an SSRF hole).

The body's byte cap (``--upload-limit``) is enforced before this runs, by Content-Length and while the body
streams in (``middleware.BodyLimitMiddleware``: 413), so the form parser never spools more than the limit;
the parser's own caps bound the number of parts and the size of each text field.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass, field

from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException
from starlette.requests import Request

from localai_sd.server.errors import ApiError

#: OpenAI accepts up to 16 input images; a mask is one more file.
MAX_FILES = 17
MAX_FIELDS = 64
#: Longest text field (a prompt of 4000 characters is 16 KB of UTF-8 at most).
MAX_FIELD_BYTES = 64 * 1024
IMAGE_FIELDS = ("image", "image[]")
_DATA_URL = re.compile(
    r"^data:(?P<type>[\w.+-]+/[\w.+-]+)?(?P<params>(;[\w.+-]+=[\w.+-]+)*)(?P<b64>;base64)?,"
)
_URL_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


@dataclass(frozen=True)
class EditUpload:
    """The parts of an edit form: the images in order with their field names, the mask, the text fields."""

    images: list[tuple[str, bytes]] = field(default_factory=list)
    mask: bytes | None = None
    fields: dict[str, str] = field(default_factory=dict)

    def warnings(self) -> list[str]:
        """Notes for the client: images after the first are not used."""
        if len(self.images) <= 1:
            return []
        return [
            f"{len(self.images) - 1} image(s) after the first were ignored: only the first image is edited"
        ]


async def read_edit_form(request: Request) -> EditUpload:
    """Read the multipart form (400 for a malformed one or a file where text belongs, and vice versa)."""
    try:
        form = await request.form(max_files=MAX_FILES, max_fields=MAX_FIELDS, max_part_size=MAX_FIELD_BYTES)
    except MultiPartException as exc:
        raise ApiError(
            400, f"the multipart form cannot be read: {exc.message}", code="invalid_form"
        ) from None
    upload = EditUpload()
    try:
        for name, value in form.multi_items():
            if name in IMAGE_FIELDS or name == "mask":
                if not isinstance(value, UploadFile):
                    raise ApiError(
                        400, f"{name} must be a file part (an image), not a text field", param=name
                    )
                data = await value.read()
                if name == "mask":
                    if upload.mask is not None:
                        raise ApiError(400, "mask was sent more than once; send one mask", param="mask")
                    upload = EditUpload(upload.images, data, upload.fields)
                else:
                    upload.images.append((name, data))
            elif isinstance(value, UploadFile):
                raise ApiError(400, f"{name} must be a text field, not a file", param=name)
            else:
                upload.fields[name] = value
    finally:
        await form.close()
    return upload


def first_image(upload: EditUpload) -> tuple[str, bytes]:
    """The image to edit (its field name and bytes); 400 naming ``image`` when none was sent."""
    if not upload.images:
        raise ApiError(400, "image is required: send the image to edit as a file part 'image'", param="image")
    return upload.images[0]


def decode_file_field(text: str, param: str = "file") -> bytes:
    """LocalAI's ``file``: base64 or a ``data:`` URL with base64 data; 400 naming ``param`` otherwise.

    A URL (``http://...``) is refused, never fetched.
    """
    value = text.strip()
    if _URL_SCHEME.match(value):
        raise ApiError(
            400,
            f"{param} looks like a URL; this server never fetches URLs from a request: send the image as "
            "base64 or a data: URL (data:image/png;base64,...)",
            param=param,
            code="url_not_allowed",
        )
    if value.startswith("data:"):
        match = _DATA_URL.match(value)
        if match is None or not match.group("b64"):
            raise ApiError(
                400, f"{param} is a data: URL without ';base64': send data:image/png;base64,...", param=param
            )
        value = value[match.end() :]
    try:
        data = base64.b64decode("".join(value.split()), validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(
            400, f"{param} is neither base64 nor a data: URL: send the image's bytes in base64", param=param
        ) from None
    if not data:
        raise ApiError(400, f"{param} is empty: send a PNG, JPEG or WebP image in base64", param=param)
    return data
