"""Deep Zoom tiles of the catalogued slides, safe under concurrent requests, with a byte-bounded LRU cache.

Tiles come from :class:`openslide.deepzoom.DeepZoomGenerator` (Deep Zoom Image format, the one OpenSeadragon
reads: level ``L`` is the slide scaled by ``2**(L - max_level)``, tiles of ``tile_px`` plus ``overlap`` px).
Each server thread opens its own OpenSlide handle per slide (a ``threading.local``), so no handle is shared
between threads; encoded JPEG tiles are kept in one LRU cache shared by all threads (guarded by a lock).
"""

from __future__ import annotations

import io
import threading
from collections import OrderedDict

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


class TileServer:
    """Deep Zoom descriptors and JPEG tiles for the slides of a :class:`Catalog`."""

    def __init__(self, catalog: Catalog, cache: TileCache | None = None):
        self.catalog = catalog
        self.cache = cache or TileCache()
        self._local = threading.local()

    def _generator(self, key: str) -> DeepZoomGenerator:
        """This thread's Deep Zoom generator for slide ``key`` (opened on first use in the thread)."""
        gens = getattr(self._local, "generators", None)
        if gens is None:
            gens = self._local.generators = {}
        gen = gens.get(key)
        if gen is None:
            osr = openslide.OpenSlide(str(self.catalog.slides[key].slide_path))
            gen = gens[key] = DeepZoomGenerator(osr, tile_size=TILE_PX, overlap=OVERLAP_PX, limit_bounds=False)
        return gen

    def dzi(self, key: str) -> str:
        """The Deep Zoom XML descriptor of slide ``key``."""
        return self._generator(key).get_dzi("jpeg")

    def tile(self, key: str, level: int, col: int, row: int) -> bytes | None:
        """JPEG bytes of tile ``(col, row)`` of Deep Zoom ``level``, or None when outside the pyramid."""
        cache_key = (key, level, col, row)
        data = self.cache.get(cache_key)
        if data is not None:
            return data
        gen = self._generator(key)
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
