"""Request and response bodies of the HTTP API (pydantic v2).

Unknown fields are ignored and every optional field accepts ``null``, as the official
client sends explicit ``None`` as JSON ``null`` (openai-python ``_base_client``).
"""

from __future__ import annotations

import json
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from starlette.requests import Request

from localai_sd.server.errors import ApiError, validation_error

#: OpenAI ``response_format`` values (openai-openapi ``CreateImageRequest``).
RESPONSE_FORMATS = ("url", "b64_json")


class ResponseFormatObject(BaseModel):
    """LocalAI v2.0–v2.16 sent ``response_format`` as an object ``{"type": ...}``."""

    model_config = ConfigDict(extra="ignore")

    type: str | None = None


class ImageGenerationBody(BaseModel):
    """``POST /v1/images/generations``: OpenAI's fields plus LocalAI's extensions."""

    model_config = ConfigDict(extra="ignore")

    prompt: str
    negative_prompt: str | None = None
    n: int | None = None
    size: str | None = None
    response_format: str | ResponseFormatObject | None = None
    model: str | None = None
    #: LocalAI's name is ``step``; ``steps`` is accepted too.
    step: int | None = None
    steps: int | None = None
    mode: int | None = None
    seed: int | None = None
    sampler: str | None = None
    schedule: str | None = None
    cfg_scale: float | None = None
    #: Accepted and ignored, as LocalAI does.
    user: Any = None
    quality: Any = None
    style: Any = None

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


class ImageData(BaseModel):
    """One image of an ``ImagesResponse``; ``seed`` is our extension field."""

    url: str | None = None
    b64_json: str | None = None
    revised_prompt: str | None = None
    seed: int


class ImagesResponse(BaseModel):
    """OpenAI's ``ImagesResponse`` plus LocalAI's ``id``."""

    created: int
    id: str
    data: list[ImageData]
    size: str


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


async def parse_body(request: Request, model: type[BodyT]) -> BodyT:
    """Read the body as JSON whatever its Content-Type (curl -d sends form type) and validate it."""
    raw = await request.body()
    try:
        data = json.loads(raw) if raw.strip() else None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"the request body is not valid JSON: {exc}", code="invalid_json") from None
    if not isinstance(data, dict):
        raise ApiError(400, f"the request body must be a JSON object, got {type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc.errors(include_url=False)) from None


def json_body_schema(model: type[BaseModel]) -> dict[str, Any]:
    """OpenAPI ``requestBody`` for a route that parses its JSON body itself."""
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": model.model_json_schema()}},
        }
    }
