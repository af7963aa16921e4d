"""The batcher driven directly with a fake model: batching, waiting, deadlines, drops, failures, admission."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
import torch
from fastapi.testclient import TestClient

from kind_serve.service.app import create_app
from kind_serve.service.batcher import (
    CPU_PIXEL_BUDGET,
    PIXEL_BUDGET,
    Batcher,
    BatchFailed,
    BatchKey,
    Cancelled,
    DeadlineExceeded,
    Draining,
    QueueFull,
    pixel_budget,
)

KEY = BatchKey("enhance", "photo", 8, 8)


def tensors(n: int, value: float = 0.0, side: int = 8) -> list[torch.Tensor]:
    return [torch.full((1, 3, side, side), value + i) for i in range(n)]


class FakeModel:
    """Doubles its input; records batch sizes; can be told to fail."""

    def __init__(self, poison: float | None = None, max_ok: int | None = None, delay: float = 0.0) -> None:
        self.sizes: list[int] = []
        self.seen: list[float] = []
        self.poison = poison
        self.max_ok = max_ok
        self.delay = delay

    def __call__(self, key: BatchKey, batch: torch.Tensor, alphas: list) -> torch.Tensor:
        self.sizes.append(batch.shape[0])
        time.sleep(self.delay)
        if self.max_ok is not None and batch.shape[0] > self.max_ok:
            raise torch.OutOfMemoryError("CUDA out of memory (fake)")
        if self.poison is not None and bool((batch[:, 0, 0, 0] == self.poison).any()):
            raise RuntimeError("bad item")
        self.seen += batch[:, 0, 0, 0].tolist()
        return batch * 2


def test_collects_compatible_items_up_to_max_batch_size() -> None:
    b = Batcher(max_batch_size=3)
    t = b.admit()
    t.submit(KEY, tensors(5), [1.0] * 5, last=True)
    first, second = b.next_batch(), b.next_batch()
    assert [len(first.items), len(second.items)] == [3, 2]
    # FIFO order is kept across batches
    assert [float(i.tensor[0, 0, 0, 0]) for i in first.items + second.items] == [0, 1, 2, 3, 4]


def test_batches_hold_one_size_bucket_and_start_with_the_oldest() -> None:
    b = Batcher(max_batch_size=8)
    other = BatchKey("enhance", "photo", 16, 8)
    t = b.admit()
    t.submit(KEY, tensors(1), [1.0], last=False)
    t.submit(other, tensors(2, 10, side=16)[:2], [1.0, 1.0], last=False)
    t.submit(KEY, tensors(1, 20), [1.0], last=True)
    batches = [b.next_batch(), b.next_batch()]
    assert [bt.key for bt in batches] == [KEY, other]
    assert [len(bt.items) for bt in batches] == [2, 2]


def test_pixel_budget_bounds_the_batch() -> None:
    b = Batcher(max_batch_size=8, pixel_budget=2 * 8 * 8)
    t = b.admit()
    t.submit(KEY, tensors(5), [1.0] * 5, last=True)
    assert len(b.next_batch().items) == 2


def test_no_waiting_when_nothing_else_is_coming() -> None:
    b = Batcher(max_batch_size=8, max_queue_delay=2.0)
    b.admit().submit(KEY, tensors(1), [1.0], last=True)
    start = time.monotonic()
    assert len(b.next_batch().items) == 1
    assert time.monotonic() - start < 0.5  # far below the 2 s queue delay


def test_waits_for_a_request_that_is_still_preparing() -> None:
    b = Batcher(max_batch_size=8, max_queue_delay=2.0)
    b.admit().submit(KEY, tensors(1), [1.0], last=True)
    late = b.admit()  # admitted, still decoding its image
    threading.Timer(0.2, lambda: late.submit(KEY, tensors(1, 5), [1.0], last=True)).start()
    batch = b.next_batch()
    assert len(batch.items) == 2


def test_waiting_is_bounded_by_the_queue_delay() -> None:
    b = Batcher(max_batch_size=8, max_queue_delay=0.1)
    b.admit().submit(KEY, tensors(1), [1.0], last=True)
    b.admit()  # never submits
    start = time.monotonic()
    assert len(b.next_batch().items) == 1
    assert time.monotonic() - start < 1.0


def test_expired_items_get_deadline_exceeded_before_compute() -> None:
    now = [100.0]
    b = Batcher(timeout_s=5, clock=lambda: now[0])
    (old,) = b.admit().submit(KEY, tensors(1), [1.0], last=True)
    now[0] += 10
    (fresh,) = b.admit().submit(KEY, tensors(1, 7), [1.0], last=True)
    batch = b.next_batch()
    assert [i.future for i in batch.items] == [fresh]
    with pytest.raises(DeadlineExceeded):
        old.result(timeout=0)
    assert b.metrics.dropped_items.labels("timeout")._value.get() == 1


def test_ticket_wait_times_out_and_drops_its_queued_work() -> None:
    b = Batcher(timeout_s=0.2)
    t = b.admit()
    futures = t.submit(KEY, tensors(3), [1.0] * 3, last=True)
    with pytest.raises(DeadlineExceeded):
        asyncio.run(t.wait(futures))
    assert all(f.cancelled() for f in futures)
    b.admit().submit(KEY, tensors(1, 9), [1.0], last=True)
    model = FakeModel()
    b.execute(b.next_batch(), model)
    assert model.seen == [9.0]  # only the other request's item reached the model


def test_disconnected_clients_work_is_dropped_before_compute() -> None:
    b = Batcher(max_batch_size=8)
    gone, stays = b.admit(), b.admit()
    gone_futures = gone.submit(KEY, tensors(3), [1.0] * 3, last=True)
    stays.submit(KEY, tensors(1, 50), [1.0], last=True)
    gone.cancel("disconnected")
    model = FakeModel()
    b.execute(b.next_batch(), model)
    assert model.seen == [50.0]
    assert all(f.cancelled() for f in gone_futures)
    assert b.metrics.dropped_items.labels("disconnected")._value.get() == 3


def test_cancelled_wait_reports_the_disconnect() -> None:
    b = Batcher()
    t = b.admit()
    futures = t.submit(KEY, tensors(1), [1.0], last=True)

    async def run() -> None:
        asyncio.get_running_loop().call_later(0.05, t.cancel, "disconnected")
        await t.wait(futures)

    with pytest.raises(Cancelled):
        asyncio.run(run())


def test_a_failing_item_fails_alone_and_the_rest_of_its_batch_succeeds() -> None:
    b = Batcher(max_batch_size=8)
    good, bad = b.admit(), b.admit()
    good_f = good.submit(KEY, tensors(3), [1.0] * 3, last=True)  # values 0, 1, 2
    (bad_f,) = bad.submit(KEY, tensors(1, 99), [1.0], last=True)
    b.execute(b.next_batch(), FakeModel(poison=99))
    assert [float(f.result().take()[0, 0, 0]) for f in good_f] == [0.0, 2.0, 4.0]
    with pytest.raises(BatchFailed) as info:
        bad_f.result()
    assert info.value.reason == "inference_error"
    assert b.metrics.failures.labels("inference_error")._value.get() == 1


def test_out_of_memory_splits_the_batch_and_retries() -> None:
    b = Batcher(max_batch_size=8)
    futures = b.admit().submit(KEY, tensors(4), [1.0] * 4, last=True)
    model = FakeModel(max_ok=2)
    b.execute(b.next_batch(), model)
    assert model.sizes == [4, 2, 2]
    assert [float(f.result().take()[0, 0, 0]) for f in futures] == [0.0, 2.0, 4.0, 6.0]


def test_a_single_item_out_of_memory_is_reported_as_oom() -> None:
    b = Batcher()
    (f,) = b.admit().submit(KEY, tensors(1), [1.0], last=True)
    b.execute(b.next_batch(), FakeModel(max_ok=0))
    with pytest.raises(BatchFailed) as info:
        f.result()
    assert info.value.reason == "oom"


def test_wrong_output_count_fails_the_items_instead_of_mismatching_them() -> None:
    b = Batcher()
    futures = b.admit().submit(KEY, tensors(2), [1.0] * 2, last=True)
    b.execute(b.next_batch(), lambda key, batch, alphas: batch[:1])
    # split retry: each item alone then succeeds, so no item gets another's output
    assert [float(f.result().take()[0, 0, 0]) for f in futures] == [0.0, 1.0]
    futures = b.admit().submit(KEY, tensors(2), [1.0] * 2, last=True)
    b.execute(b.next_batch(), lambda key, batch, alphas: [])
    for f in futures:
        with pytest.raises(BatchFailed):
            f.result()


def test_serve_loop_survives_failures_and_stops_on_the_sentinel() -> None:
    b = Batcher()
    model = FakeModel(poison=0)
    worker = threading.Thread(target=b.serve, args=(model,))
    worker.start()
    (bad,) = b.admit().submit(KEY, tensors(1, 0), [1.0], last=True)
    with pytest.raises(BatchFailed):
        bad.result(timeout=5)
    (good,) = b.admit().submit(KEY, tensors(1, 3), [1.0], last=True)
    assert float(good.result(timeout=5).take()[0, 0, 0]) == 6.0
    b.stop(1)
    worker.join(5)
    assert not worker.is_alive()


def test_admission_is_bounded_and_fast() -> None:
    b = Batcher(max_pending=2)
    first, _ = b.admit(), b.admit()
    start = time.perf_counter()
    with pytest.raises(QueueFull):
        b.admit()
    assert time.perf_counter() - start < 0.05
    first.close()
    b.admit()
    b.drain()
    with pytest.raises(Draining):
        b.admit()


def test_inflight_pixels_are_bounded_but_a_lone_image_is_admitted() -> None:
    b = Batcher(max_inflight_pixels=1000)
    big = b.admit()
    big.reserve(5000)  # alone: admitted (its size is checked against the megapixel limit elsewhere)
    other = b.admit()
    with pytest.raises(QueueFull):
        other.reserve(10)
    big.close()
    other.reserve(10)


def test_closing_a_ticket_drops_its_leftover_items() -> None:
    b = Batcher()
    with b.admit() as t:
        futures = t.submit(KEY, tensors(2), [1.0] * 2, last=True)
    assert all(f.cancelled() for f in futures)
    assert b.pending == 0


@pytest.mark.parametrize("kwargs", [{"max_batch_size": 0}, {"max_pending": 0}, {"pixel_budget": 0}])
def test_invalid_configuration_is_refused(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        Batcher(**kwargs)


def test_clients_take_turns_so_a_small_request_is_not_starved_by_a_jobs_tiles() -> None:
    b = Batcher(max_batch_size=2)
    jobs = b.admit()
    jobs.client = "token:jobs"
    small = BatchKey("enhance", "photo", 16, 16)
    jobs.submit(KEY, tensors(20), [1.0] * 20, last=True)  # one client's job: 20 tiles, 10 batches
    other = b.admit()
    other.client = "addr:10.0.0.2"
    other.submit(small, tensors(1, 100, side=16), [1.0], last=True)
    order = [b.next_batch() for _ in range(4)]
    assert [bt.items[0].ticket.client for bt in order] == ["token:jobs", "addr:10.0.0.2", "token:jobs", "token:jobs"]
    assert [float(i.tensor[0, 0, 0, 0]) for i in order[1].items] == [100]  # the other client's item, second batch
    assert [float(i.tensor[0, 0, 0, 0]) for i in order[2].items] == [2, 3]  # then the job's tiles in order


def test_one_client_alone_is_served_first_in_first_out() -> None:
    b = Batcher(max_batch_size=1)
    tickets = [b.admit() for _ in range(3)]
    for n, t in enumerate(tickets):
        t.client = "addr:1"
        t.submit(KEY, tensors(1, 10 * n), [1.0], last=True)
    assert [float(b.next_batch().items[0].tensor[0, 0, 0, 0]) for _ in range(3)] == [0, 10, 20]


def test_a_cpu_replica_batches_about_one_tile_and_a_gpu_one_more(make_settings) -> None:
    """Batching buys a CPU nothing and costs activation memory per extra tile; a GPU gains from it."""
    assert pixel_budget([torch.device("cpu")]) == CPU_PIXEL_BUDGET < 832 * 832 * 2
    assert pixel_budget([torch.device("cpu"), torch.device("cuda:0")]) == PIXEL_BUDGET > CPU_PIXEL_BUDGET
    with TestClient(create_app(make_settings())) as c:  # started: its workers are on the CPU
        assert c.app.state.batcher.pixel_budget == CPU_PIXEL_BUDGET
