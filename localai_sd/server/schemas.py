"""Request and response bodies of the HTTP API (pydantic v2).

Unknown fields are ignored and every optional field accepts ``null``, as the official
client sends explicit ``None`` as JSON ``null`` (openai-python ``_base_client``).
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictInt,
    StrictStr,
    ValidationError,
    field_validator,
)
from starlette.requests import Request

from localai_sd.server.errors import ApiError, validation_error

#: OpenAI ``response_format`` values (openai-openapi ``CreateImageRequest``).
RESPONSE_FORMATS = ("url", "b64_json")
#: Deepest nesting of arrays/objects a request body may have (the bodies here need 4).
MAX_JSON_DEPTH = 32
#: Longest ``size`` text; ``WIDTHxHEIGHT`` needs at most 11 characters.
MAX_SIZE_CHARS = 32
#: The ``size`` values OpenAI's ``ImagesResponse`` schema allows; any other size is left out of a response.
RESPONSE_SIZES = ("1024x1024", "1024x1536", "1536x1024")


class ResponseFormatObject(BaseModel):
    """LocalAI v2.0–v2.16 sent ``response_format`` as an object ``{"type": ...}``."""

    model_config = ConfigDict(extra="ignore")

    type: str | None = None


def _no_bool(value: object) -> object:
    """Refuse JSON true/false where a number belongs (pydantic would read true as 1)."""
    if isinstance(value, bool):
        raise ValueError("must be a number, not true/false")
    return value


#: Numbers that are never booleans; form text ("5", "0.5") still converts.
Int = Annotated[int, BeforeValidator(_no_bool)]
Float = Annotated[float, BeforeValidator(_no_bool)]


def _split_pair(value: object) -> object:
    """A form's ``guidance_interval`` as ``lo,hi`` text -> [lo, hi] (JSON sends the list itself)."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",")]
    return value


class ExtensionFields(BaseModel):
    """OpenAI's image fields and LocalAI's/our extensions shared by generations, edits and variations.

    Raw values go to ``localai_sd.intake`` unchanged (request > model config > global default): ``mode`` is
    0, a positive integer or ``auto``; ``seed`` -1 is random; ``sampler`` takes A1111/sd.cpp names too.
    """

    model_config = ConfigDict(extra="ignore")

    negative_prompt: str | None = None
    n: Int | None = None
    size: str | None = None
    response_format: str | ResponseFormatObject | None = None
    model: str | None = None
    #: LocalAI's name is ``step``; ``steps`` is accepted too.
    step: Int | None = None
    steps: Int | None = None
    mode: StrictInt | StrictStr | None = None
    seed: Int | None = None
    sampler: str | None = None
    schedule: str | None = None
    cfg_scale: Float | None = None
    #: Fewer UNet evaluations (issue 13): guidance only for lo < sigma <= hi; A1111's s_min_uncond; DeepCache.
    guidance_interval: list[Float] | None = None
    s_min_uncond: Float | None = None
    s_min_uncond_all: bool | None = None
    deepcache_interval: Int | None = None
    #: OpenAI's output encoding: png, jpeg or webp, and the JPEG/WebP quality 0-100 (default 100).
    output_format: Literal["png", "jpeg", "webp"] | None = None
    output_compression: Int | None = Field(default=None, ge=0, le=100)
    #: OpenAI streaming (``stream: true``), routed to ``routes_images.stream_hook``.
    stream: bool | None = None
    partial_images: Int | None = Field(default=None, ge=0, le=3)
    #: Accepted and ignored, as LocalAI does.
    user: Any = None
    quality: Any = None
    style: Any = None
    background: Any = None
    moderation: Any = None

    @field_validator("size")
    @classmethod
    def _short_size(cls, value: str | None) -> str | None:
        """Refuse an absurd ``size`` before anything parses its numbers."""
        if value is not None and len(value) > MAX_SIZE_CHARS:
            raise ValueError(f"must be WIDTHxHEIGHT such as 512x512, at most {MAX_SIZE_CHARS} characters")
        return value

    @field_validator("guidance_interval", mode="before")
    @classmethod
    def _pair_text(cls, value: object) -> object:
        """Accept ``lo,hi`` text (form fields, query-like clients) as well as a JSON list."""
        return _split_pair(value)

    @field_validator("response_format")
    @classmethod
    def _known_format(cls, value: str | ResponseFormatObject | None) -> str | None:
        """Normalise to ``url``/``b64_json`` (string or ``{"type"}``); None means the default."""
        kind = value.type if isinstance(value, ResponseFormatObject) else value
        if kind is not None and kind not in RESPONSE_FORMATS:
            raise ValueError(f"must be one of {', '.join(RESPONSE_FORMATS)}")
        return kind

    def format(self) -> Literal["url", "b64_json"]:
        """The response format, ``url`` unless ``b64_json`` was asked."""
        return "b64_json" if self.response_format == "b64_json" else "url"

    def step_count(self) -> int | None:
        """``step`` if given, else ``steps``, else None."""
        return self.step if self.step is not None else self.steps


class ImageGenerationBody(ExtensionFields):
    """``POST /v1/images/generations``: OpenAI's fields plus LocalAI's extensions.

    LocalAI's ``file`` (base64 or a ``data:`` URL, never a URL to fetch) makes it img2img at ``strength``.
    """

    prompt: str
    file: str | None = None
    strength: Float | None = None


class ImageEditFields(ExtensionFields):
    """The text fields of ``POST /v1/images/edits`` and ``/v1/images/variations`` (multipart form)."""

    prompt: str | None = None
    strength: Float | None = None
    mask_blur: Float | None = None
    inpaint_only_masked: bool | None = None
    padding: Int | None = None
    mask_invert: bool | None = None
    input_fidelity: Any = None


class ImageData(BaseModel):
    """One image of an ``ImagesResponse``; ``seed`` is our extension field."""

    url: str | None = None
    b64_json: str | None = None
    revised_prompt: str | None = None
    seed: int


class ImagesResponse(BaseModel):
    """OpenAI's ``ImagesResponse`` plus LocalAI's ``id``; ``size`` only when it is one of the spec's values."""

    created: int
    id: str
    data: list[ImageData]
    size: Literal["1024x1024", "1024x1536", "1536x1024"] | None = None
    output_format: Literal["png", "jpeg", "webp"] | None = None


class ErrorObject(BaseModel):
    """OpenAI's ``Error``: what went wrong, its kind, the offending parameter and a stable code."""

    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    """OpenAI's ``ErrorResponse``: every error this server answers has this body."""

    error: ErrorObject


class Readiness(BaseModel):
    """``GET /readyz``: started or not, queue numbers and warm models."""

    ready: bool
    running: int
    queued: int
    loaded_models: list[str]


class ApplyResponse(BaseModel):
    """``POST /models/apply``: the install job's id and its status URL."""

    uuid: str
    status: str


class MessageResponse(BaseModel):
    """A one-line confirmation, e.g. of a delete."""

    message: str


class ApplyBody(BaseModel):
    """``POST /models/apply``: LocalAI's install request (passed on to the gallery as a dict)."""

    model_config = ConfigDict(extra="allow")

    url: str | None = None
    id: str | None = None
    name: str | None = None
    overrides: dict[str, Any] | None = None
    files: list[dict[str, Any]] | None = None
    config_url: str | None = None


class ModelEntry(BaseModel):
    """One entry of ``GET /v1/models`` (OpenAI's ``Model`` object)."""

    id: str
    object: str = "model"
    created: int = 0
    owned_by: str = "localai-sd"


class ModelList(BaseModel):
    """``GET /v1/models``."""

    object: str = "list"
    data: list[ModelEntry] = Field(default_factory=list)


BodyT = TypeVar("BodyT", bound=BaseModel)


def json_problem(data: Any) -> ApiError | None:
    """A 400 for JSON nested past MAX_JSON_DEPTH, or holding text UTF-8 cannot encode (a lone surrogate)."""
    stack: list[tuple[Any, int, str | None]] = [(data, 0, None)]
    while stack:
        value, depth, param = stack.pop()
        if depth > MAX_JSON_DEPTH:
            message = f"the request body is nested deeper than {MAX_JSON_DEPTH} levels"
            return ApiError(400, message, param=param, code="invalid_json")
        if isinstance(value, dict):
            for key, item in value.items():
                if not is_utf8(key):
                    return ApiError(
                        400, f"a field name is not valid Unicode text: {key!r}", code="invalid_json"
                    )
                stack.append((item, depth + 1, param or key))
        elif isinstance(value, list):
            stack.extend((item, depth + 1, param) for item in value)
        elif isinstance(value, str) and not is_utf8(value):
            message = f"{param or 'the body'} is not valid Unicode text (a lone surrogate such as \\ud800)"
            return ApiError(400, message, param=param, code="invalid_text")
    return None


def is_utf8(text: str) -> bool:
    """Whether ``text`` encodes as UTF-8 (false for lone surrogates)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def load_json(raw: bytes) -> Any:
    """Decode a JSON body; every decoding failure is a 400, never a 500."""
    try:
        return json.loads(raw) if raw.strip() else None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"the request body is not valid JSON: {exc}", code="invalid_json") from None
    except RecursionError:
        message = f"the request body is nested deeper than {MAX_JSON_DEPTH} levels"
        raise ApiError(400, message, code="invalid_json") from None
    except ValueError as exc:  # a number past Python's int digit limit (4300 digits)
        raise ApiError(
            400, f"the request body has a number too long to read: {exc}", code="invalid_json"
        ) from None


async def parse_body(request: Request, model: type[BodyT]) -> BodyT:
    """Read the body as JSON whatever its Content-Type (curl -d sends form type) and validate it.

    ``CsrfGuard`` has already refused form types from browsers; a JSON body from curl is fine.
    """
    data = load_json(await request.body())
    if not isinstance(data, dict):
        raise ApiError(400, f"the request body must be a JSON object, got {type(data).__name__}")
    if problem := json_problem(data):
        raise problem
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc.errors(include_url=False)) from None


def validate_fields(model: type[BodyT], data: dict[str, Any]) -> BodyT:
    """Validate a dict (form fields) into ``model``; a 400 naming the first bad field."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc.errors(include_url=False)) from None


def component_ref(model: type[BaseModel]) -> dict[str, str]:
    """A ``$ref`` to ``model`` under the OpenAPI document's ``components/schemas``."""
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def json_body_schema(model: type[BaseModel]) -> dict[str, Any]:
    """OpenAPI ``requestBody`` for a route that parses its JSON body itself (``openapi.py`` adds the schema)."""
    return {
        "requestBody": {"required": True, "content": {"application/json": {"schema": component_ref(model)}}}
    }
