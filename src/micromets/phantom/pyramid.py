"""Streaming writer of pyramidal tiled JPEG TIFF files that OpenSlide reads as "generic tiled TIFF".

`write_pyramid` asks a renderer for one row of tiles at a time (level-0 strips `tile_px` high, full width, in
windows of at most `chunk_px` columns), JPEG-encodes the tiles of level 0 straight into the file and halves
each strip into the level below. Every
level keeps at most one tile row of pixels pending; encoded tiles of the lower levels wait in a temporary spool
file until level 0 is complete and are then copied into the TIFF without re-encoding. Peak memory is therefore
a few strips (O(width × tile_px)), independent of the slide height, for slides up to CAMELYON scale
(100,000 × 200,000 px).

File layout (one TIFF directory per level, largest first, the layout of OpenSlide's "generic tiled TIFF" format,
https://openslide.org/formats/generic-tiff/):

- tiled, `tile_px` × `tile_px`, JPEG (YCbCr 4:2:0, quality `jpeg_quality`), 8-bit RGB;
- levels 1.. are marked reduced-resolution (NewSubfileType = 1) and each is half the size of the one above
  (rounded up), until the whole level fits in one tile;
- XResolution / YResolution in pixels per centimetre with ResolutionUnit = centimetre, so that OpenSlide reports
  `openslide.mpp-x` = `openslide.mpp-y` = the level-0 µm/px (1 cm = 10,000 µm).
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import imagecodecs
import numpy as np
import tifffile

from micromets.errors import MicrometsError

RenderRegion = Callable[[int, int, int, int], np.ndarray]
"""`render_region(l0_x, l0_y, l0_w, l0_h) -> (l0_h, l0_w, 3) uint8 RGB` of level-0 pixels."""

_SUBSAMPLING = (2, 2)  # JPEG chroma subsampling written in the YCbCrSubSampling tag and used by the encoder


def pyramid_level_dimensions(l0_width: int, l0_height: int, tile_px: int = 256) -> list[tuple[int, int]]:
    """(width, height) of every level the writer produces: halved (rounded up) until one tile holds the level."""
    dims = [(int(l0_width), int(l0_height))]
    while dims[-1][0] > tile_px or dims[-1][1] > tile_px:
        w, h = dims[-1]
        dims.append(((w + 1) // 2, (h + 1) // 2))
    return dims


def _halve(rows: np.ndarray) -> np.ndarray:
    """2 × 2 box-filter downsample of uint8 RGB rows; an odd last row/column is repeated before averaging."""
    h, w = rows.shape[:2]
    if h % 2 or w % 2:
        rows = np.pad(rows, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
    acc = rows.reshape(rows.shape[0] // 2, 2, rows.shape[1] // 2, 2, 3).astype(np.uint16).sum(axis=(1, 3))
    return ((acc + 2) // 4).astype(np.uint8)


class _Level:
    """One pyramid level below level 0: pending pixel rows, and a spool of its JPEG tiles in row-major order."""

    def __init__(self, l_width: int, l_height: int, spool_dir: str):
        self.l_width, self.l_height = l_width, l_height
        self.pending: list[np.ndarray] = []
        self.n_pending = 0
        self.rows_done = 0
        self.spool = tempfile.TemporaryFile(dir=spool_dir)
        self.tile_sizes: list[int] = []

    def tiles(self) -> Iterator[bytes]:
        """The spooled JPEG tiles, read back one at a time."""
        self.spool.seek(0)
        for size in self.tile_sizes:
            yield self.spool.read(size)


def _encode_tile_row(rows: np.ndarray, tile_px: int, quality: int) -> Iterator[bytes]:
    """JPEG tiles of one tile row (≤ tile_px rows high), padded with white to full tiles at the right/bottom edge."""
    h, w = rows.shape[:2]
    n_cols = math.ceil(w / tile_px)
    if h < tile_px or w < n_cols * tile_px:
        padded = np.full((tile_px, n_cols * tile_px, 3), 255, np.uint8)
        padded[:h, :w] = rows
        rows = padded
    for t_col in range(n_cols):
        tile = np.ascontiguousarray(rows[:, t_col * tile_px:(t_col + 1) * tile_px])
        yield imagecodecs.jpeg_encode(
            tile, level=quality, colorspace="RGB", outcolorspace="YCBCR", subsampling=_SUBSAMPLING
        )


def write_pyramid(
    path: str | Path,
    l0_width: int,
    l0_height: int,
    l0_mpp: float,
    render_region: RenderRegion,
    tile_px: int = 256,
    jpeg_quality: int = 80,
    description: str = "",
    chunk_px: int = 4096,
) -> list[tuple[int, int]]:
    """Write an OpenSlide-readable pyramidal tiled JPEG TIFF by streaming level-0 strips from `render_region`.

    Parameters
    ----------
    path : output `.tif`/`.tiff` file (overwritten).
    l0_width, l0_height : level-0 size in pixels.
    l0_mpp : level-0 resolution in µm per pixel (written as pixels per centimetre = 10,000 / l0_mpp).
    render_region : `render_region(l0_x, l0_y, l0_w, l0_h) -> (l0_h, l0_w, 3)` uint8 RGB; called for each tile
        row (`l0_h = tile_px`, less for the last row), top to bottom, in windows of at most `chunk_px` columns,
        left to right.
    tile_px : tile side in pixels (a multiple of 16, as 4:2:0 JPEG needs).
    jpeg_quality : libjpeg quality 1–100.
    description : ImageDescription of level 0 (keep it free of vendor prefixes such as "Aperio").
    chunk_px : widest window asked of `render_region` (bounds the renderer's working memory on wide slides).

    Returns the (width, height) of every level written, level 0 first.
    """
    if l0_width < 1 or l0_height < 1:
        raise MicrometsError(f"pyramid size must be positive, got {l0_width} x {l0_height} px")
    if not (l0_mpp > 0 and math.isfinite(l0_mpp)):
        raise MicrometsError(f"pyramid l0_mpp must be a positive number of µm/px, got {l0_mpp}")
    if tile_px < 16 or tile_px % 16:
        raise MicrometsError(f"pyramid tile_px must be a positive multiple of 16, got {tile_px}")
    path = Path(path)
    dims = pyramid_level_dimensions(l0_width, l0_height, tile_px)
    px_per_cm = 10_000.0 / l0_mpp

    with tempfile.TemporaryDirectory(prefix="micromets-pyramid-", dir=path.parent) as spool_dir:
        levels = [_Level(w, h, spool_dir) for w, h in dims[1:]]

        def push(index: int, rows: np.ndarray, final: bool) -> None:
            """Give `rows` of the level above to level `index`; encode each complete tile row; cascade down."""
            if index >= len(levels):
                return
            level = levels[index]
            if rows.shape[0]:
                level.pending.append(rows)
                level.n_pending += rows.shape[0]
            while level.n_pending >= tile_px or (final and level.n_pending):
                block = np.concatenate(level.pending, axis=0) if len(level.pending) > 1 else level.pending[0]
                take = min(tile_px, block.shape[0])
                row, rest = block[:take], block[take:]
                level.pending = [rest] if rest.shape[0] else []
                level.n_pending = rest.shape[0]
                level.rows_done += take
                for encoded in _encode_tile_row(row, tile_px, jpeg_quality):
                    level.spool.write(encoded)
                    level.tile_sizes.append(len(encoded))
                push(index + 1, _halve(row), final and not level.n_pending)

        def level0_tiles() -> Iterator[bytes]:
            for l0_y in range(0, l0_height, tile_px):
                l0_h = min(tile_px, l0_height - l0_y)
                strip = np.empty((l0_h, l0_width, 3), np.uint8)
                for l0_x in range(0, l0_width, chunk_px):
                    l0_w = min(chunk_px, l0_width - l0_x)
                    part = np.asarray(render_region(l0_x, l0_y, l0_w, l0_h))
                    if part.shape != (l0_h, l0_w, 3) or part.dtype != np.uint8:
                        raise ValueError(
                            f"render_region({l0_x}, {l0_y}, {l0_w}, {l0_h}) returned {part.shape} {part.dtype}, "
                            f"expected ({l0_h}, {l0_w}, 3) uint8"
                        )
                    strip[:, l0_x:l0_x + l0_w] = part
                encoded = list(_encode_tile_row(strip, tile_px, jpeg_quality))
                # cascade before yielding: the TIFF writer stops pulling after the last tile it needs
                push(0, _halve(strip), l0_y + l0_h >= l0_height)
                yield from encoded

        common = dict(
            photometric="rgb",
            compression="jpeg",
            subsampling=_SUBSAMPLING,
            tile=(tile_px, tile_px),
            dtype=np.uint8,
            resolution=(px_per_cm, px_per_cm),
            resolutionunit="CENTIMETER",
            metadata=None,
        )
        with tifffile.TiffWriter(path, bigtiff=True) as tif:
            tif.write(
                level0_tiles(), shape=(l0_height, l0_width, 3), description=description or None,
                software="micromets", **common,
            )
            for level in levels:
                if level.rows_done != level.l_height:
                    raise RuntimeError(f"pyramid level {level.l_width}x{level.l_height} got {level.rows_done} rows")
                tif.write(level.tiles(), shape=(level.l_height, level.l_width, 3), subfiletype=1, **common)
                level.spool.close()
    return dims
