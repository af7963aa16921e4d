"""API fuzzing from the service's own OpenAPI schema (schemathesis) against a real server on loopback.

Every operation gets generated requests, valid and invalid, checked by schemathesis: no 5xx, status codes,
content types, headers and bodies as the schema documents them, invalid data rejected, ``Allow`` on 405.
A second pass sends a real small image as the body of the upload operations so that generated parameters
meet the model path too. Example counts are bounded so the module runs in well under two minutes.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import negative_data_rejection, positive_data_acceptance

from kind_serve.service.app import create_app
from kind_serve.service.config import Settings

from . import hostile
from .conftest import ThreadServer, rel_settings

# more with KIND_FUZZ_EXAMPLES=N (the image pass gets half as many)
EXAMPLES = int(os.environ.get("KIND_FUZZ_EXAMPLES", "60"))
IMAGE_EXAMPLES = max(1, EXAMPLES // 2)
PNG = hostile.encode(hostile.noise(40, 24), "PNG")

# the schema comes from an app that is never started (the OpenAPI document needs no model); the requests
# go to the live server of the fixture
schema = schemathesis.openapi.from_dict(create_app(Settings(checkpoint=Path("unused"), device="cpu")).openapi())


@pytest.fixture(scope="module")
def fuzz_server(rel_bundle: Path) -> Iterator[ThreadServer]:
    limits = {"max_megapixels": 1.0, "max_upload_bytes": 1 << 20, "request_timeout_s": 30}
    settings = rel_settings(rel_bundle, **limits)
    with ThreadServer(settings) as server:
        stored = httpx.post(f"{server.url}/images", content=PNG, timeout=30)  # an id that exists, for the GETs
        assert stored.status_code == 201
        yield server


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
def test_fuzz_every_operation(case, fuzz_server: ThreadServer) -> None:  # noqa: ANN001
    # random bytes are a schema-valid "binary" body but not an image: 415/422 is the right answer to them
    case.call_and_validate(base_url=fuzz_server.url, excluded_checks=[positive_data_acceptance], timeout=60)


@schema.include(method="POST").parametrize()
@settings(max_examples=IMAGE_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
def test_fuzz_parameters_with_a_real_image(case, fuzz_server: ThreadServer) -> None:  # noqa: ANN001
    # with the body replaced, schemathesis' idea of which cases are invalid no longer holds: the test above
    # checks that invalid data is rejected; this one checks the answers to a real image (no 5xx, schema)
    case.body = PNG
    case.media_type = "image/png"
    excluded = [positive_data_acceptance, negative_data_rejection]
    case.call_and_validate(base_url=fuzz_server.url, excluded_checks=excluded, timeout=60)


def test_fuzz_summary(fuzz_server: ThreadServer) -> None:
    """Over everything the fuzz tests sent (counted by the server's own metrics): no 5xx, real 200s."""
    by_status: dict[str, float] = {}
    for line in httpx.get(f"{fuzz_server.url}/metrics", timeout=30).text.splitlines():
        if line.startswith("kind_requests_total{"):
            status = line.split('status="')[1].split('"')[0]
            by_status[status] = by_status.get(status, 0) + float(line.rsplit(" ", 1)[1])
    sys.stdout.write(f"\nfuzz requests by status: {dict(sorted(by_status.items()))}\n")
    assert sum(by_status.values()) > 200
    assert not [s for s in by_status if s.startswith("5")], by_status
    assert by_status.get("200", 0) > 20  # the real-image pass reached the model
