"""The service's thread policy (:func:`service.worker.leave_cores_to_workers`): a worker computes on the threads it
was given, while the threads that only help a request along (blending tiles, the grey mask, normalising) run
torch single-threaded, so that their OpenMP teams do not compete with the worker's for the cores."""

from __future__ import annotations

import torch
from fastapi.testclient import TestClient

from kind_serve.service import inference, payloads
from kind_serve.service.app import create_app
from kind_serve.service.worker import Worker
from tests.service.conftest import image_bytes


def test_workers_keep_their_threads_and_helpers_run_on_one(make_settings, monkeypatch) -> None:
    seen: dict[str, set[int]] = {"worker": set(), "to_thread": set(), "threadpool": set()}

    def recording(where: str, fn):  # noqa: ANN001, ANN202
        def call(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            seen[where].add(torch.get_num_threads())
            return fn(*args, **kwargs)

        return call

    monkeypatch.setattr(Worker, "compute", recording("worker", Worker.compute))
    monkeypatch.setattr(inference, "parts_canvas", recording("to_thread", inference.parts_canvas))  # asyncio.to_thread
    monkeypatch.setattr(payloads, "_prepare", recording("threadpool", payloads._prepare))  # run_in_threadpool
    before = torch.get_num_threads()
    torch.set_num_threads(2)  # the workers' count is the one set when the app is made
    try:
        with TestClient(create_app(make_settings())) as client:
            for seed in range(3):  # the pools' threads are made lazily: later requests may meet new ones
                response = client.post("/enhance?alpha=auto", content=image_bytes(90, 70, seed=seed))
                assert response.status_code == 200, response.text
        after_shutdown = torch.get_num_threads()
    finally:
        torch.set_num_threads(before)
    assert seen["worker"] == {2}
    assert seen["to_thread"] == {1}
    assert seen["threadpool"] == {1}
    assert after_shutdown == 2  # the count is handed back when the service stops
