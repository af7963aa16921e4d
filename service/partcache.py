"""The re-lighting cache: stored images' α-independent parts, kept so that a new α skips the big networks.

An LRU in process memory bounded by ``KIND_PARTS_CACHE_BYTES`` (0 turns it off) of :class:`model.parts.Parts`,
keyed by :func:`parts_key`; mode and α are not in the key, as the parts serve every one. Only stored images
are cached, looked up after the (client-scoped) image store has answered, so a client never gets the parts of
an image only another client stored. Used from the event loop and worker threads alike, hence the lock.
"""

from __future__ import annotations

import collections
import threading

from kind_serve.model.multires import Quality
from kind_serve.model.parts import Parts

from .inference import ServedModel
from .metrics import Metrics


def parts_key(image_id: str, served: ServedModel, preview: int | None = None, quality: Quality = "full") -> str:
    """The key of a stored image's parts under everything they depend on: the model version, precision and
    tiling, a preview's longest side, the quality (the fast path's parts are made at half resolution)."""
    geo = served.geometry
    key = f"{image_id}|{served.version}|{served.precision}|{geo.tile_size}/{geo.tile_overlap}/{geo.bucket}"
    key += "" if preview is None else f"|preview={preview}"
    return key if quality == "full" else f"{key}|quality={quality}"


class PartsCache:
    """LRU of :class:`~model.parts.Parts` by bytes."""

    def __init__(self, max_bytes: int, metrics: Metrics) -> None:
        self.max_bytes = max_bytes
        self.metrics = metrics
        self.used = 0
        self._items: collections.OrderedDict[str, Parts] = collections.OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: str) -> Parts | None:
        """The parts under ``key`` (now the most recently used), or None."""
        with self._lock:
            parts = self._items.get(key)
            if parts is not None:
                self._items.move_to_end(key)
        self.metrics.parts_cache_lookups.labels("hit" if parts is not None else "miss").inc()
        return parts

    def put(self, key: str, parts: Parts) -> bool:
        """Keep ``parts`` under ``key``, evicting the least recently used; False when they alone exceed the budget."""
        with self._lock:
            if key in self._items:
                self.used -= self._items.pop(key).nbytes
            stored = parts.nbytes <= self.max_bytes
            if stored:
                self._items[key] = parts
                self.used += parts.nbytes
            while self.used > self.max_bytes:
                self.used -= self._items.popitem(last=False)[1].nbytes
            self.metrics.parts_cache_bytes.set(self.used)
        return stored

    def clear(self) -> None:
        """Drop every entry."""
        with self._lock:
            self._items.clear()
            self.used = 0
        self.metrics.parts_cache_bytes.set(0)
