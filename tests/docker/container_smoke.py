"""Smoke test of the running compose stack, from outside the containers (run by ``.ci/docker.sh``).

Talks to the stack from outside, like a user (and an intruder) would: enhances a real low-light photo with the
bearer token, stores one in the shared (Redis) store and enhances it by id, sends a broken upload, checks that
the service's metrics (on their own port) count the work and that Prometheus scraped them, that nothing answers
without the token, and that Redis refuses anonymous clients and holds the service's user to its ACL. Exits
non-zero with a message naming the first failed check.

usage: python -m tests.docker.container_smoke --api URL --metrics URL --prometheus URL --token-file PATH
       --redis-port N --redis-password-file PATH --photo PATH --state-dir DIR [--phase before|after]
``--phase after`` (after a Redis restart) checks that the stored image survived it.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import redis
from PIL import Image, ImageOps

STATE_FILE = "smoke-state.json"


class SmokeFailure(RuntimeError):
    """A check of the running stack failed."""


def check(condition: bool, message: str) -> None:
    if not condition:
        raise SmokeFailure(message)


def say(message: str, mark: str = "ok") -> None:
    sys.stdout.write(f"  {mark:4}{message}\n")
    sys.stdout.flush()


def enhance_photo(api: httpx.Client, photo: Path) -> None:
    """A real photo in, an image of the same (EXIF-oriented) size out, with the α and model headers."""
    data = photo.read_bytes()
    expected = ImageOps.exif_transpose(Image.open(io.BytesIO(data))).size
    started = time.monotonic()
    r = api.post("/enhance", files={"file": (photo.name, data, "application/octet-stream")})
    seconds = time.monotonic() - started
    check(r.status_code == 200, f"POST /enhance answered {r.status_code}: {r.text[:300]}")
    check(r.headers.get("content-type") == "image/png", f"expected PNG, got {r.headers.get('content-type')}")
    out = Image.open(io.BytesIO(r.content))
    check(out.size == expected, f"enhanced size {out.size} differs from the upload's {expected}")
    alpha = float(r.headers["x-alpha"])
    check(alpha > 0, f"X-Alpha should be positive, got {alpha}")
    check(bool(r.headers.get("x-model-version")), "X-Model-Version header missing")
    mean_in = float(np.asarray(Image.open(io.BytesIO(data)).convert("L")).mean())
    mean_out = float(np.asarray(out.convert("L")).mean())
    check(mean_out > mean_in, f"the enhanced image is not brighter (mean grey {mean_in:.1f} -> {mean_out:.1f})")
    say(
        f"POST /enhance {photo.name} {expected[0]}x{expected[1]}: 200 PNG in {seconds:.2f} s, alpha={alpha:g}, "
        f"mean grey {mean_in:.1f} -> {mean_out:.1f}"
    )


def store_and_enhance(api: httpx.Client, photo: Path) -> str:
    """Store a photo (Redis, shared by replicas) and enhance it by id."""
    r = api.post("/images", content=photo.read_bytes())
    check(r.status_code == 201, f"POST /images answered {r.status_code}: {r.text[:300]}")
    image_id = r.json()["id"]
    r = api.post("/enhance", params={"image_id": image_id, "alpha": "3", "format": "jpeg"})
    check(r.status_code == 200, f"POST /enhance?image_id= answered {r.status_code}: {r.text[:300]}")
    check(r.headers.get("content-type") == "image/jpeg", f"expected JPEG, got {r.headers.get('content-type')}")
    check(r.headers.get("x-alpha") == "3", f"asked for alpha 3, X-Alpha says {r.headers.get('x-alpha')}")
    say(f"POST /images -> {image_id[:12]}..., POST /enhance?image_id=&alpha=3&format=jpeg: 200 JPEG")
    return image_id


def bad_upload(api: httpx.Client) -> None:
    """Garbage bytes are the client's fault: a 4xx problem+json, never a 500."""
    r = api.post("/enhance", files={"file": ("notes.txt", b"this is not an image", "text/plain")})
    check(400 <= r.status_code < 500, f"a non-image upload answered {r.status_code}, expected a 4xx")
    check(
        r.headers.get("content-type", "").startswith("application/problem+json"),
        f"error body is {r.headers.get('content-type')}, expected application/problem+json",
    )
    say(f"POST /enhance with a text file: {r.status_code} problem+json ({r.json().get('title')})")


def metric_value(text: str, name: str, labels: str = "") -> float:
    """Sum of the samples of ``name`` whose label set contains ``labels`` (Prometheus text format)."""
    total, found = 0.0, False
    for line in text.splitlines():
        if line.startswith(name) and (line[len(name)] in " {") and labels in line:
            total += float(line.rsplit(" ", 1)[1])
            found = True
    check(found, f"/metrics has no sample {name}{{{labels}}}")
    return total


def check_auth(api_url: str) -> None:
    """Without the token: 401 on the API and on its documentation, and no /metrics on the API port at all."""
    with httpx.Client(base_url=api_url, timeout=30) as anonymous:
        for method, path in (("POST", "/enhance"), ("POST", "/images"), ("GET", "/openapi.json"), ("GET", "/docs")):
            r = anonymous.request(method, path, content=b"x" if method == "POST" else None)
            check(r.status_code == 401, f"{method} {path} without a token answered {r.status_code}, expected 401")
            check(r.headers.get("x-content-type-options") == "nosniff", f"{path}: no X-Content-Type-Options")
        r = anonymous.get("/metrics")
        check(r.status_code == 404, f"GET /metrics on the API port answered {r.status_code}, expected 404")
        check(anonymous.get("/readyz").status_code == 200, "GET /readyz without a token is not 200")
    say("no token: 401 on /enhance, /images, /openapi.json, /docs; /metrics only on the metrics port")


def check_redis_locked(port: int, password: str) -> None:
    """Anonymous clients are refused; the service's own user may not list, reach other keys or reconfigure."""
    anonymous = redis.Redis(host="127.0.0.1", port=port, socket_timeout=5)
    try:
        anonymous.ping()
        raise SmokeFailure("Redis answered PING without authentication")
    except redis.exceptions.AuthenticationError:
        pass
    except redis.exceptions.ResponseError as exc:
        check("NOAUTH" in str(exc), f"unexpected Redis answer to an anonymous PING: {exc}")
    finally:
        anonymous.close()
    service = redis.Redis(host="127.0.0.1", port=port, username="kind", password=password, socket_timeout=5)
    try:
        check(service.ping(), "the service's Redis user cannot PING")
        for command in (("KEYS", "*"), ("SET", "elsewhere", "1"), ("CONFIG", "GET", "*"), ("FLUSHALL",)):
            try:
                service.execute_command(*command)
                raise SmokeFailure(f"the service's Redis user may run {' '.join(command)}")
            except redis.exceptions.NoPermissionError:
                pass
    finally:
        service.close()
    say("Redis: anonymous PING refused (NOAUTH); user kind denied KEYS, SET outside kind:, CONFIG, FLUSHALL")


def check_metrics(metrics: httpx.Client) -> None:
    r = metrics.get("/metrics")
    check(r.status_code == 200, f"GET /metrics on the metrics port answered {r.status_code}")
    images = metric_value(r.text, "kind_images_processed_total", 'op="enhance"')
    check(images >= 2, f"kind_images_processed_total{{op=enhance}} is {images}, expected >= 2")
    check(metric_value(r.text, "kind_ready") == 1, "kind_ready is not 1")
    metric_value(r.text, "kind_pending_requests")  # the HPA's scaling metric (docker/k8s/hpa.yaml) must exist
    say(f"GET /metrics: kind_images_processed_total{{op=enhance}}={images:g}, kind_ready=1")


def check_prometheus(prometheus: httpx.Client, deadline_s: float = 60.0) -> None:
    """Prometheus scraped the API: the job's target is up and the enhanced-image counter arrived."""
    query = 'sum(kind_images_processed_total{job="kind",op="enhance"})'
    stop = time.monotonic() + deadline_s
    last = "no answer"
    while time.monotonic() < stop:
        try:
            r = prometheus.get("/api/v1/query", params={"query": query})
            result = r.json()["data"]["result"]
            if result and float(result[0]["value"][1]) >= 2:
                up = prometheus.get("/api/v1/query", params={"query": 'up{job="kind"}'}).json()["data"]["result"]
                check(all(s["value"][1] == "1" for s in up), f"a kind target is down: {up}")
                say(f"Prometheus scraped /metrics: {query} = {result[0]['value'][1]}, {len(up)} target(s) up")
                return
            last = json.dumps(result)
        except (httpx.HTTPError, KeyError, ValueError) as exc:
            last = repr(exc)
        time.sleep(2)
    raise SmokeFailure(f"Prometheus did not scrape the API within {deadline_s:.0f} s (last answer: {last})")


def fetch_after_restart(api: httpx.Client, path: str, attempts: int = 5) -> httpx.Response:
    """GET, retrying 503s: pooled connections to the old Redis fail once before the client reconnects."""
    for attempt in range(1, attempts + 1):
        r = api.get(path)
        if r.status_code != 503 or attempt == attempts:
            return r
        say(f"GET {path[:20]}...: 503 right after the Redis restart ({r.json().get('detail')}), retrying", mark="..")
        time.sleep(1)
    return r


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--api", required=True)
    p.add_argument("--metrics", required=True, help="the API's metrics listener (KIND_METRICS_ADDRESS)")
    p.add_argument("--prometheus", required=True)
    p.add_argument("--token-file", type=Path, required=True, help="auth_tokens secret: the first token is used")
    p.add_argument("--redis-port", type=int, required=True)
    p.add_argument("--redis-password-file", type=Path, required=True)
    p.add_argument("--photo", type=Path, required=True, help="a real low-light photo")
    p.add_argument("--state-dir", type=Path, required=True, help="where --phase before leaves the stored id")
    p.add_argument("--phase", choices=("before", "after"), default="before")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    state = args.state_dir / STATE_FILE
    token = args.token_file.read_text().replace(",", "\n").split()[0]
    headers = {"Authorization": f"Bearer {token}"}
    try:
        with httpx.Client(base_url=args.api, timeout=120, headers=headers) as api:
            if args.phase == "before":
                for probe in ("/livez", "/readyz"):
                    r = api.get(probe)
                    check(r.status_code == 200, f"GET {probe} answered {r.status_code}")
                say("GET /livez and /readyz: 200")
                enhance_photo(api, args.photo)
                image_id = store_and_enhance(api, args.photo)
                state.write_text(json.dumps({"image_id": image_id}))
                bad_upload(api)
                check_auth(args.api)
                check_redis_locked(args.redis_port, args.redis_password_file.read_text().rstrip("\n"))
                with httpx.Client(base_url=args.metrics, timeout=10) as metrics:
                    check_metrics(metrics)
                with httpx.Client(base_url=args.prometheus, timeout=10) as prometheus:
                    check_prometheus(prometheus)
            else:
                image_id = json.loads(state.read_text())["image_id"]
                r = fetch_after_restart(api, f"/images/{image_id}")
                check(
                    r.status_code == 200, f"stored image lost after the Redis restart: GET /images -> {r.status_code}"
                )
                check(r.content == args.photo.read_bytes(), "stored image came back with different bytes")
                say("GET /images/<id> after restarting Redis: 200, same bytes (the volume kept the store)")
    except (SmokeFailure, httpx.HTTPError, redis.exceptions.RedisError) as exc:
        sys.stderr.write(f"SMOKE TEST FAILED: {exc}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
