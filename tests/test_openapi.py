"""The OpenAPI document is valid and true: every $ref resolves, and schemathesis finds no 5xx or undocumented answer."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import Case, GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    negative_data_rejection,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from server_helpers import GatedPipeline, gated_loader, live_server

from localai_sd.server.app import create_app
from localai_sd.settings import Settings

#: Examples per operation: enough to reach every status branch, small enough for CI (whole file ~30 s).
MAX_EXAMPLES = 15
#: Installs are fuzzed only through explicit cases: generated URLs would leave the machine.
NOT_FUZZED = ("/models/apply",)
#: Schemathesis's checks that the document is true. Not ``positive_data_acceptance``: limits that depend
#: on the settings (n x steps, pixels, prompt length, installed models) are checked by the server, not the schema.
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
    negative_data_rejection,
]


def refs(node: Any) -> Iterator[str]:
    """Every ``$ref`` value in a JSON document."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield value
            else:
                yield from refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from refs(item)


def resolve(document: dict[str, Any], ref: str) -> Any:
    """Follow a local JSON pointer ``#/a/b``; KeyError if it does not resolve."""
    assert ref.startswith("#/"), ref
    node: Any = document
    for part in ref[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


@pytest.fixture(scope="module")
def base_url(tiny_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A live server on the tiny models with an always-open fake pipeline and no galleries (nothing to download)."""
    pipeline = GatedPipeline()
    pipeline.gate.set()
    images = tmp_path_factory.mktemp("openapi-images")
    app = create_app(
        Settings(models_path=tiny_models, image_path=images, galleries=(), queue_size=64),
        loader=gated_loader(pipeline),
    )
    with live_server(app) as url:
        yield url


@pytest.fixture(scope="module")
def document(base_url: str) -> dict[str, Any]:
    """The served document."""
    return httpx.get(f"{base_url}/openapi.json").json()


def test_every_ref_resolves_and_every_status_is_documented(document: dict[str, Any]) -> None:
    for ref in set(refs(document)):
        resolve(document, ref)
    generate = document["paths"]["/v1/images/generations"]["post"]
    assert {"200", "400", "401", "403", "404", "413", "415", "429"} <= set(generate["responses"])
    assert "422" not in generate["responses"]
    error = generate["responses"]["400"]["content"]["application/json"]["schema"]
    assert resolve(document, error["$ref"])["required"] == ["error"]
    image = document["paths"]["/generated-images/{name}"]["get"]["responses"]["200"]["content"]
    assert list(image) == ["image/png", "image/jpeg", "image/webp"]
    assert set(document["paths"]["/healthz"]) == {"get", "head"}


def test_schemathesis_finds_no_server_error_and_no_undocumented_answer(base_url: str) -> None:
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json")
    for result in schema.get_all_operations():
        operation = result.ok()
        if operation.path not in NOT_FUZZED:
            fuzz(operation, GenerationMode.POSITIVE, base_url)
            if len(operation.body):  # a body can be made schema-invalid; a free path string cannot
                fuzz(operation, GenerationMode.NEGATIVE, base_url)


def fuzz(operation: Any, mode: GenerationMode, base_url: str) -> None:
    """MAX_EXAMPLES generated cases of one operation, each called and checked (hypothesis raises the failure)."""

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
        database=None,
        derandomize=True,  # the same examples every run: CI cannot fail on a case this run never tried
    )
    def call(case: Case) -> None:
        case.call_and_validate(base_url=base_url, checks=CHECKS)

    call()


def test_model_apply_answers_are_documented_without_downloading(base_url: str) -> None:
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json")
    apply = schema["/models/apply"]["POST"]
    for body in ({"id": "no-gallery@nothing"}, {"name": 5}, {}):
        case = apply.Case(body=body, media_type="application/json")
        case.call_and_validate(base_url=base_url, checks=CHECKS)
