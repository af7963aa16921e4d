"""Issue 25 at the HTTP edge: connections, client identity, what a client may store, the docs pages.

Each test runs a real server on loopback (uvicorn in a thread with the service's own server options, or
``kind serve``) and plays one attack from the issue; every loop is bounded and every helper stops by itself.

- connections: an idle connection and a request head trickled byte by byte are cut by their timeouts, and
  connections beyond ``max_connections`` are refused, while a normal client keeps its answers;
- client identity: ``X-Forwarded-For`` from a peer that is not a listed proxy neither renames the client nor
  buys it another share;
- the store share: decompositions and job results count against the share of the client who caused them,
  so they cannot evict another client's image;
- ``/docs`` and ``/redoc`` carry the demo page's security headers.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from PIL import Image

from . import hostile
from .conftest import ThreadServer, rel_settings

TIMEOUT = httpx.Timeout(60.0)
TOKEN_A, TOKEN_B = "greedy-client-token-aaaa", "polite-client-token-bbbb"


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def noisy_png(seed: int, side: int = 224) -> bytes:
    """~150 kB of incompressible PNG: its decomposition is as large."""
    rng = np.random.default_rng(seed)
    return hostile.encode(Image.fromarray(rng.integers(0, 255, (side, side, 3), dtype=np.uint8)), "PNG")


def store(url: str, body: bytes, token: str) -> httpx.Response:
    headers = {"content-type": "image/png", **bearer(token)}
    return httpx.post(f"{url}/images", content=body, headers=headers, timeout=TIMEOUT)


# -- derived results are charged to the client that caused them ---------------------------------------------


@pytest.fixture
def two_clients(rel_bundle) -> Iterator[ThreadServer]:  # noqa: ANN001
    """Two tokens sharing a 1 MiB in-process store, half of it each."""
    settings = rel_settings(
        rel_bundle,
        client_share=0.5,
        auth_tokens=[TOKEN_A, TOKEN_B],
        store_max_bytes=1024 * 1024,
        max_jobs=4,
    )
    with ThreadServer(settings) as srv:
        yield srv


def test_cached_decompositions_cannot_evict_another_clients_image(two_clients: ThreadServer) -> None:
    """A stores one image and asks for its decomposition at 8 light levels (8 cached zips, over 1 MiB together):
    every one is answered, and B's image, stored first, is still served."""
    url = two_clients.url
    kept = store(url, noisy_png(100), TOKEN_B)
    assert kept.status_code == 201
    image_id = store(url, noisy_png(1), TOKEN_A).json()["id"]
    sizes = []
    for alpha in range(1, 9):
        zipped = httpx.get(
            f"{url}/decompose/{image_id}/all.zip",
            params={"alpha": alpha, "mode": "paper"},
            headers=bearer(TOKEN_A),
            timeout=TIMEOUT,
        )
        assert zipped.status_code == 200, zipped.text[:300]
        sizes.append(len(zipped.content))
    assert sum(sizes) > 1024 * 1024, sizes  # without a share these alone would have filled the store
    got = httpx.get(url + kept.json()["links"]["image"], headers=bearer(TOKEN_B), timeout=TIMEOUT)
    assert got.status_code == 200, "A's cached decompositions evicted B's image"


def wait_job(url: str, job_id: str, token: str, limit_s: float = 120) -> dict:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        record = httpx.get(f"{url}/jobs/{job_id}", headers=bearer(token), timeout=TIMEOUT).json()
        if record["state"] in ("done", "failed", "cancelled"):
            return record
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} did not end within {limit_s:g} s")


def test_job_results_cannot_evict_another_clients_image(two_clients: ThreadServer) -> None:
    """A runs 8 decomposition jobs (8 stored zips, over 1 MiB together): the jobs past A's half of the store
    fail with 429 client-share, and B's image is still served."""
    url = two_clients.url
    kept = store(url, noisy_png(100), TOKEN_B)
    assert kept.status_code == 201
    body = noisy_png(1)
    states, sizes = [], []
    for alpha in range(1, 9):
        created = httpx.post(
            f"{url}/jobs",
            params={"op": "decompose", "alpha": alpha, "mode": "paper"},
            content=body,
            headers={"content-type": "image/png", **bearer(TOKEN_A)},
            timeout=TIMEOUT,
        )
        assert created.status_code in (202, 429), created.text[:300]
        if created.status_code == 429:
            states.append("refused")
            continue
        record = wait_job(url, created.json()["id"], TOKEN_A)
        states.append(record["state"])
        if record["state"] == "done":
            result = httpx.get(f"{url}/jobs/{record['id']}/result", headers=bearer(TOKEN_A), timeout=TIMEOUT)
            sizes.append(len(result.content))
        else:
            assert record["error"]["status"] == 429 and record["error"]["type"].endswith("/client-share"), record
    assert states[0] == "done" and states[-1] != "done", (states, sizes)
    assert sum(sizes) <= 1024 * 1024 // 2, sizes
    got = httpx.get(url + kept.json()["links"]["image"], headers=bearer(TOKEN_B), timeout=TIMEOUT)
    assert got.status_code == 200, "A's job results evicted B's image"
