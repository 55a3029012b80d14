"""Pixels of a phantom slide: any level-0 window of a `Layout`, rendered on demand and deterministically.

Regions, back to front:

- glass: a flat near-white (noise-free: it costs nothing in the JPEG tiles);
- perinodal fat: texture from a FAT tile library when one is given (stream 3: real adipose tissue, re-stained
  like the capsule), else adipocytes drawn as a Voronoi tessellation (cells ≈ `ADIPOCYTE_UM` across) of thin
  eosinophilic membranes around empty white cells;
- node: texture from the NORMAL tile library (`texture.synthesize`, stream 0);
- capsule (and trabeculae and stroma islands when the layout has them): the node outside the cortex, texture from the CAPSULE tile library (stream 2: real
  fibrous stroma, re-stained to the normal tiles' H&E by `texture.restain`);
- lesions: texture from the TUMOUR tile library (stream 1) inside each lesion outline, with a hard edge, so that
  the pixels drawn as tumour are exactly those whose centre lies inside the ground-truth outline.

Pixel (r, c) of a window at (l0_x, l0_y) has its centre at level-0 (l0_x + c + 0.5, l0_y + r + 0.5); a pixel
belongs to a region when its centre lies inside the region's polygon (even-odd scan-line fill).
Adipocytes are a function of the level-0 position (integer hashing), so every window of the slide renders
identically however the slide is cut into windows.
"""

from __future__ import annotations

import numpy as np
import shapely

from micromets.normalise import REFERENCE_HE
from micromets.phantom.layout import Layout
from micromets.phantom.texture import TileLibrary, synthesize



def _stained(h_conc: float, e_conc: float) -> np.ndarray:
    """RGB of a pixel holding `h_conc` haematoxylin and `e_conc` eosin (Beer-Lambert, reference H&E vectors).

    Drawing the synthetic structures as mixtures of the tiles' own stain vectors (`normalise.REFERENCE_HE`, the
    Macenko estimate of the CAMELYON16 tiles) keeps them inside the slide's H&E colour plane, so they do not
    distort a per-slide stain estimate the way an arbitrary pink would.
    """
    od = h_conc * REFERENCE_HE[0] + e_conc * REFERENCE_HE[1]
    return (255.0 * 10.0 ** (-od)).astype(np.float32)


GLASS_RGB = np.array([242.0, 240.0, 244.0], np.float32)
FAT_RGB = np.array([247.0, 244.0, 246.0], np.float32)
MEMBRANE_RGB = _stained(0.05, 0.35)
ADIPOCYTE_UM = 70.0
MEMBRANE_UM = 2.5


def _hash(ix: np.ndarray, iy: np.ndarray, seed: int) -> np.ndarray:
    """Deterministic pseudo-random uint32 per integer position (a 32-bit integer hash of x, y and seed)."""
    h = (ix.astype(np.uint64) * np.uint64(0x9E3779B1) + iy.astype(np.uint64) * np.uint64(0x85EBCA77)
         + np.uint64(seed & 0xFFFFFFFF) * np.uint64(0xC2B2AE3D)) & np.uint64(0xFFFFFFFF)
    h ^= h >> np.uint64(15)
    h = (h * np.uint64(0x2C1B3C6D)) & np.uint64(0xFFFFFFFF)
    h ^= h >> np.uint64(12)
    h = (h * np.uint64(0x297A2D39)) & np.uint64(0xFFFFFFFF)
    h ^= h >> np.uint64(15)
    return h


def _fill(geom, l0_x: int, l0_y: int, l0_w: int, l0_h: int) -> np.ndarray:
    """Bool (l0_h, l0_w) mask of the window's pixels whose centres lie inside `geom` (even-odd rule, holes too).

    Scan-line fill: on each pixel-row centre line, every polygon edge it crosses (half-open in y) toggles
    inside/outside from the crossing onward; a cumulative sum of the toggles gives the parity per pixel.
    """
    mask_h, mask_w = l0_h, l0_w
    if geom.is_empty:
        return np.zeros((mask_h, mask_w), bool)
    rings = shapely.get_rings(shapely.get_parts(geom))
    coords, ring_index = shapely.get_coordinates(rings, return_index=True)
    same_ring = ring_index[:-1] == ring_index[1:]
    x1, y1 = coords[:-1][same_ring].T
    x2, y2 = coords[1:][same_ring].T
    y_lo, y_hi = np.minimum(y1, y2), np.maximum(y1, y2)
    keep = (y_hi > l0_y) & (y_lo < l0_y + l0_h) & (np.minimum(x1, x2) < l0_x + l0_w)
    x1, y1, x2, y2, y_lo, y_hi = (v[keep] for v in (x1, y1, x2, y2, y_lo, y_hi))
    toggles = np.zeros((mask_h, mask_w + 1), np.int32)
    if x1.size:
        y_row = l0_y + np.arange(mask_h) + 0.5
        crosses = (y_lo[None, :] <= y_row[:, None]) & (y_row[:, None] < y_hi[None, :])
        rows, edges = np.nonzero(crosses)
        t = (y_row[rows] - y1[edges]) / (y2[edges] - y1[edges])
        x_cross = x1[edges] + t * (x2[edges] - x1[edges])
        # pixel c is right of the crossing when its centre l0_x + c + 0.5 > x_cross
        cols = np.clip(np.floor(x_cross - l0_x - 0.5).astype(np.int64) + 1, 0, mask_w)
        np.add.at(toggles, (rows, cols), 1)
    return (np.cumsum(toggles[:, :mask_w], axis=1) & 1).astype(bool)


class PhantomRenderer:
    """Render level-0 windows of a phantom `layout` from NORMAL, TUMOUR and CAPSULE tile libraries and a seed."""

    def __init__(self, layout: Layout, normal: TileLibrary, tumour: TileLibrary, capsule: TileLibrary, seed: int,
                 fat: TileLibrary | None = None):
        self.layout, self.normal, self.tumour, self.capsule, self.seed = layout, normal, tumour, capsule, seed
        self.fat = fat
        self._lesions = shapely.union_all([les.outline_l0 for les in layout.lesions]) if layout.lesions else None

    def lesion_mask(self, l0_x: int, l0_y: int, l0_w: int, l0_h: int) -> np.ndarray:
        """Bool mask of the pixels drawn as tumour in this window (the ground truth rasterised)."""
        if self._lesions is None:
            return np.zeros((l0_h, l0_w), bool)
        return _fill(self._lesions, l0_x, l0_y, l0_w, l0_h)

    def _fat(self, l0_x: int, l0_y: int, mask: np.ndarray) -> np.ndarray:
        """Adipocyte membranes (bool) at the masked pixels: Voronoi edges of jittered seed points."""
        rows, cols = np.nonzero(mask)
        x = cols + l0_x + 0.5
        y = rows + l0_y + 0.5
        cell_px = ADIPOCYTE_UM / self.layout.l0_mpp
        gx, gy = np.floor(x / cell_px).astype(np.int64), np.floor(y / cell_px).astype(np.int64)
        best = np.full((2, x.size), np.inf)
        for dx in (-1, 0, 1):
            for dy in (-1, 0, 1):
                cx, cy = gx + dx, gy + dy
                h = _hash(cx + (1 << 20), cy + (1 << 20), self.seed)
                px = (cx + 0.15 + 0.7 * (h & np.uint64(0xFFFF)) / 65535.0) * cell_px
                py = (cy + 0.15 + 0.7 * (h >> np.uint64(16)) / 65535.0) * cell_px
                d = np.hypot(x - px, y - py)
                second = np.minimum(best[1], np.maximum(best[0], d))
                best[0] = np.minimum(best[0], d)
                best[1] = second
        return (best[1] - best[0]) < MEMBRANE_UM / self.layout.l0_mpp

    def render_region(self, l0_x: int, l0_y: int, l0_w: int, l0_h: int) -> np.ndarray:
        """(l0_h, l0_w, 3) uint8 RGB of the level-0 window at (l0_x, l0_y)."""
        lay = self.layout
        node = _fill(lay.node_l0, l0_x, l0_y, l0_w, l0_h)
        fat = _fill(lay.fat_l0, l0_x, l0_y, l0_w, l0_h) & ~node
        out = np.empty((l0_h, l0_w, 3), np.float32)
        out[:] = GLASS_RGB
        if fat.any() and self.fat is not None:
            texture = synthesize(self.fat, l0_x, l0_y, l0_w, l0_h, self.seed, 3, needed=fat)
            np.copyto(out, texture, where=fat[..., None])
        elif fat.any():
            membrane = np.zeros_like(fat)
            membrane[fat] = self._fat(l0_x, l0_y, fat)
            np.copyto(out, FAT_RGB, where=(fat & ~membrane)[..., None])
            np.copyto(out, MEMBRANE_RGB, where=membrane[..., None])
        if node.any():
            cortex = node & _fill(lay.cortex_l0, l0_x, l0_y, l0_w, l0_h)
            for library, stream, part in ((self.normal, 0, cortex), (self.capsule, 2, node & ~cortex)):
                if part.any():
                    texture = synthesize(library, l0_x, l0_y, l0_w, l0_h, self.seed, stream, needed=part)
                    np.copyto(out, texture, where=part[..., None])
            tumour = self.lesion_mask(l0_x, l0_y, l0_w, l0_h)
            if tumour.any():
                tumour_rgb = synthesize(self.tumour, l0_x, l0_y, l0_w, l0_h, self.seed, 1, needed=tumour)
                np.copyto(out, tumour_rgb, where=tumour[..., None])
        return np.clip(out, 0, 255, out=out).astype(np.uint8)
