"""Deep Zoom tiles of the catalogued slides, safe under concurrent requests, with a byte-bounded LRU cache.

Tiles come from :class:`openslide.deepzoom.DeepZoomGenerator` (Deep Zoom Image format, the one OpenSeadragon
reads: level ``L`` is the slide scaled by ``2**(L - max_level)``, tiles of ``tile_px`` plus ``overlap`` px).
Each slide has a small pool of OpenSlide handles (at most ``handles_per_slide``, opened on demand): a request
borrows one for its exclusive use and gives it back, so no handle is ever used by two threads at once, and the
number of open handles stays bounded however many server threads there are. Encoded JPEG tiles are kept in one
LRU cache shared by all threads (guarded by a lock).
"""

from __future__ import annotations

import io
import queue
import threading
from collections import OrderedDict
from contextlib import contextmanager

import openslide
from openslide.deepzoom import DeepZoomGenerator

from micromets.viewer.catalog import Catalog

TILE_PX = 254
OVERLAP_PX = 1
JPEG_QUALITY = 80


class TileCache:
    """Least-recently-used cache of encoded tiles, bounded by total bytes."""

    def __init__(self, max_bytes: int = 128 * 2**20):
        self.max_bytes = max_bytes
        self._items: OrderedDict[tuple, bytes] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: tuple) -> bytes | None:
        with self._lock:
            data = self._items.get(key)
            if data is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return data

    def put(self, key: tuple, data: bytes) -> None:
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._bytes -= len(old)
            self._items[key] = data
            self._bytes += len(data)
            while self._bytes > self.max_bytes and self._items:
                _, dropped = self._items.popitem(last=False)
                self._bytes -= len(dropped)

    @property
    def n_bytes(self) -> int:
        return self._bytes


class _HandlePool:
    """Up to ``size`` Deep Zoom generators (each over its own OpenSlide handle) of one slide."""

    def __init__(self, path: str, size: int):
        self.path, self.size = path, size
        self._free: queue.LifoQueue[DeepZoomGenerator] = queue.LifoQueue()
        self._opened = 0
        self._lock = threading.Lock()

    @contextmanager
    def borrow(self):
        try:
            gen = self._free.get_nowait()
        except queue.Empty:
            with self._lock:
                grow = self._opened < self.size
                self._opened += grow
            if grow:
                try:
                    gen = DeepZoomGenerator(openslide.OpenSlide(self.path), tile_size=TILE_PX, overlap=OVERLAP_PX,
                                            limit_bounds=False)
                except BaseException:
                    with self._lock:
                        self._opened -= 1
                    raise
            else:
                gen = self._free.get()
        try:
            yield gen
        finally:
            self._free.put(gen)


class TileServer:
    """Deep Zoom descriptors and JPEG tiles for the slides of a :class:`Catalog`."""

    def __init__(self, catalog: Catalog, cache: TileCache | None = None, handles_per_slide: int = 4):
        self.catalog = catalog
        self.cache = cache or TileCache()
        self.handles_per_slide = handles_per_slide
        self._pools: dict[str, _HandlePool] = {}
        self._lock = threading.Lock()

    def generator(self, key: str):
        """Borrow a Deep Zoom generator of slide ``key`` (context manager; exclusive while borrowed)."""
        with self._lock:
            pool = self._pools.get(key)
            if pool is None:
                pool = self._pools[key] = _HandlePool(str(self.catalog.slides[key].slide_path),
                                                      self.handles_per_slide)
        return pool.borrow()

    def dzi(self, key: str) -> str:
        """The Deep Zoom XML descriptor of slide ``key``."""
        with self.generator(key) as gen:
            return gen.get_dzi("jpeg")

    def tile(self, key: str, level: int, col: int, row: int) -> bytes | None:
        """JPEG bytes of tile ``(col, row)`` of Deep Zoom ``level``, or None when outside the pyramid."""
        cache_key = (key, level, col, row)
        data = self.cache.get(cache_key)
        if data is not None:
            return data
        with self.generator(key) as gen:
            if not 0 <= level < gen.level_count:
                return None
            cols, rows = gen.level_tiles[level]
            if not (0 <= col < cols and 0 <= row < rows):
                return None
            img = gen.get_tile(level, (col, row))
        buf = io.BytesIO()
        img.convert("RGB").save(buf, format="JPEG", quality=JPEG_QUALITY)
        data = buf.getvalue()
        self.cache.put(cache_key, data)
        return data
