"""The re-lighting cache: each stored image's α-independent parts, kept so that a new α skips the big networks.

One per replica, in process memory: an LRU bounded by ``KIND_PARTS_CACHE_BYTES`` (0 turns it off). An entry
is an image's :class:`model.parts.Parts` (float16: 22 bytes per pixel, 264 MB for 12 megapixels), keyed by
:func:`parts_key`: the stored image's id (its SHA-256) with everything else the parts depend on — the model
version, the precision the networks run at and the tiling, for a preview (``preview=``) its longest side, and
the quality (``quality=fast``): a preview's parts are those of the downscaled image, the fast path's those the
networks made at half resolution, each kept beside the full image's. Mode and α are not in the
key: the parts serve every mode and light level. Only stored images (``image_id=``) are cached; an upload is
seen once.

Callers look an image up only after the (client-scoped) image store has answered for it, so the cache never
serves one client the parts of an image only another client stored. Used from the event loop and from worker
threads alike, so every operation takes a lock. ``kind_parts_cache_bytes`` tracks what it holds.
"""

from __future__ import annotations

import collections
import threading

from kind_serve.model.multires import Quality
from kind_serve.model.parts import Parts

from .inference import ServedModel
from .metrics import Metrics


def parts_key(image_id: str, served: ServedModel, preview: int | None = None, quality: Quality = "full") -> str:
    """The cache key of a stored image's parts under the served model, precision and tiling; of its preview
    with the longest side ``preview``; of its fast path's parts (:mod:`model.multires`) for ``quality="fast"``."""
    geo = served.geometry
    key = f"{image_id}|{served.version}|{served.precision}|{geo.tile_size}/{geo.tile_overlap}/{geo.bucket}"
    key += "" if preview is None else f"|preview={preview}"
    return key if quality == "full" else f"{key}|quality={quality}"


class PartsCache:
    """LRU of :class:`~model.parts.Parts` by bytes (see the module docstring)."""

    def __init__(self, max_bytes: int, metrics: Metrics | None = None) -> None:
        self.max_bytes = max_bytes
        self.metrics = metrics
        self.used = 0
        self._items: collections.OrderedDict[str, Parts] = collections.OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: str) -> Parts | None:
        with self._lock:
            parts = self._items.get(key)
            if parts is not None:
                self._items.move_to_end(key)
        if self.metrics is not None:
            self.metrics.parts_cache_lookups.labels("hit" if parts is not None else "miss").inc()
        return parts

    def put(self, key: str, parts: Parts) -> bool:
        """Keep ``parts`` under ``key``, evicting the least recently used; False when they alone exceed the budget."""
        size = parts.nbytes
        with self._lock:
            if key in self._items:
                self.used -= self._items.pop(key).nbytes
            stored = size <= self.max_bytes
            if stored:
                self._items[key] = parts
                self.used += size
            while self.used > self.max_bytes:
                _, dropped = self._items.popitem(last=False)
                self.used -= dropped.nbytes
            used = self.used
        if self.metrics is not None:
            self.metrics.parts_cache_bytes.set(used)
        return stored

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self.used = 0
        if self.metrics is not None:
            self.metrics.parts_cache_bytes.set(0)
