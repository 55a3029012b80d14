"""The tumour heatmap as a pyramidal tiled TIFF that QuPath and ASAP open beside (or over) the slide.

The TIFF covers the slide's whole level-0 extent: one overlay pixel is ``l0_per_px`` level-0 pixels (a power of
two, at most a quarter of a heatmap cell, so a cell's edge is placed within a quarter cell even when the heatmap's
origin is not on the overlay grid), and its resolution tags say ``l0_mpp × l0_per_px`` µm/px. Values are the tumour
probability × 255 (uint8, one channel; 0 outside the analysed cells). Layout: OpenSlide's "generic tiled TIFF"
(https://openslide.org/formats/generic-tiff/): level 0 first, then reduced-resolution pages (NewSubfileType 1), each
half the size of the one above (2 × 2 mean), 256 px tiles, lossless deflate, resolution in pixels per centimetre.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tifffile

from micromets.heatmap import Heatmap

TILE_PX = 256


def overlay_l0_per_px(heatmap: Heatmap) -> int:
    """Level-0 pixels per overlay pixel: the largest power of two not above a quarter of a heatmap cell."""
    return 1 << max(0, int(np.floor(np.log2(max(heatmap.l0_cell / 4, 1.0)))))


def heatmap_raster(heatmap: Heatmap, l0_width: int, l0_height: int, l0_per_px: int) -> np.ndarray:
    """Tumour probability × 255 (uint8) on the overlay grid: each overlay pixel takes the cell under its centre."""
    width, height = -(-l0_width // l0_per_px), -(-l0_height // l0_per_px)
    h_rows, h_cols = heatmap.h_prob.shape
    h_c = np.floor(((np.arange(width) + 0.5) * l0_per_px - heatmap.l0_origin[0]) / heatmap.l0_cell).astype(np.int64)
    h_r = np.floor(((np.arange(height) + 0.5) * l0_per_px - heatmap.l0_origin[1]) / heatmap.l0_cell).astype(np.int64)
    cells = np.zeros((h_rows + 1, h_cols + 1), np.uint8)  # the extra last row/column is "outside the heatmap"
    cells[:h_rows, :h_cols] = np.round(np.clip(np.nan_to_num(heatmap.h_prob), 0, 1) * 255)
    h_r = np.where((h_r >= 0) & (h_r < h_rows), h_r, h_rows)
    h_c = np.where((h_c >= 0) & (h_c < h_cols), h_c, h_cols)
    return cells[h_r[:, None], h_c[None, :]]


def write_heatmap_tiff(path: str | Path, heatmap: Heatmap, l0_width: int, l0_height: int) -> dict:
    """Write the heatmap overlay of a ``l0_width`` × ``l0_height`` slide to ``path``; returns its description
    (``file``, ``l0_per_px``, ``mpp``, ``width``, ``height``) for result.json."""
    l0_per_px = overlay_l0_per_px(heatmap)
    level = heatmap_raster(heatmap, l0_width, l0_height, l0_per_px)
    mpp = heatmap.l0_mpp * l0_per_px
    width, height = level.shape[1], level.shape[0]
    with tifffile.TiffWriter(path) as tif:
        reduced = False
        while True:
            px_per_cm = 1e4 / (mpp * width / level.shape[1])
            tif.write(level, tile=(TILE_PX, TILE_PX), compression="zlib", photometric="minisblack",
                      subfiletype=1 if reduced else 0, resolution=(px_per_cm, px_per_cm), resolutionunit="CENTIMETER",
                      description=None if reduced else "micromets tumour probability x 255", metadata=None)
            if level.shape[0] <= TILE_PX and level.shape[1] <= TILE_PX:
                break
            padded = np.pad(level, ((0, level.shape[0] % 2), (0, level.shape[1] % 2)), mode="edge").astype(np.uint16)
            level = ((padded[0::2, 0::2] + padded[1::2, 0::2] + padded[0::2, 1::2] + padded[1::2, 1::2] + 2) // 4
                     ).astype(np.uint8)
            reduced = True
    return {"file": Path(path).name, "l0_per_px": l0_per_px, "mpp": mpp,
            "width": int(width), "height": int(height)}
