"""Tumour outlines from a heatmap: the iso-line of the probability at the threshold.

The outline is traced by marching squares (Lorensen & Cline 1987; ``skimage.measure.find_contours``) through the
cell centres, so a lesion's edge lies where the probability, linearly interpolated between neighbouring cells,
crosses the threshold — not on the staircase of cell borders, which would add up to a cell's diagonal to every
diameter. High values are 8-connected (``fully_connected="high"``): diagonal neighbours belong to one outline.
Nested iso-lines are combined by the even-odd rule, so a ring of tumour keeps its hole.

Outlines come out in level-0 pixels. Grouping of nearby outlines into one lesion and the size rules are the
measurement module's work (:mod:`micromets.measure`).
"""

from __future__ import annotations

from functools import reduce

import numpy as np
import shapely
from skimage import measure as skmeasure

from micromets.heatmap import Heatmap


def outlines_l0(h_values: np.ndarray, threshold: float, cell_l0: float,
                l0_origin: tuple[float, float] = (0.0, 0.0)) -> list[shapely.Geometry]:
    """Polygons (level-0 px) enclosing the cells where ``h_values > threshold``.

    ``h_values[r, c]`` is sampled at the centre of a square cell of ``cell_l0`` level-0 pixels whose top-left
    corner is ``l0_origin + (c, r) * cell_l0``. Cells outside the array count as 0. A lone cell exactly at the
    threshold has an outline of zero size and gives no polygon.
    """
    if not np.any(h_values > threshold):
        return []
    padded = np.pad(np.asarray(h_values, np.float64), 1, constant_values=min(0.0, threshold - 1))
    contours = skmeasure.find_contours(padded, threshold, fully_connected="high")
    rings = [c for c in contours if len(c) >= 4]
    if not rings:
        return []
    ox, oy = l0_origin
    coords = [np.column_stack([ox + (c[:, 1] - 0.5) * cell_l0, oy + (c[:, 0] - 0.5) * cell_l0]) for c in rings]
    polygons = shapely.make_valid(shapely.polygons([shapely.linearrings(c) for c in coords]))
    region = reduce(shapely.symmetric_difference, polygons)  # even-odd rule over nested iso-lines
    parts = shapely.get_parts(region)
    return [p for p in parts if isinstance(p, shapely.Polygon) and p.area > 0]


def heatmap_outlines_l0(heatmap: Heatmap, threshold: float) -> list[shapely.Geometry]:
    """Outlines (level-0 px) of the heatmap cells above ``threshold``."""
    return outlines_l0(heatmap.h_prob, threshold, heatmap.l0_cell, heatmap.l0_origin)


def drop_specks(outlines_l0: list[shapely.Geometry], l0_mpp: float, min_um: float) -> list[shapely.Geometry]:
    """The outlines at least ``min_um`` across (maximum Feret diameter): an iso-line round a lone cell that
    barely reaches the threshold closes on a speck of no size (a cell at 0.5007 for a threshold of 0.5 gives a
    0.2 µm outline), which is no deposit."""
    from micromets.measure import hull_vertices, max_feret

    return [o for o in outlines_l0 if max_feret(hull_vertices(o))[0] * l0_mpp >= min_um]


def _cells_inside(heatmap: Heatmap, geoms_l0: list[shapely.Geometry]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The scored cells whose centres each geometry covers: (geometry index, cell (row, col), cell value)."""
    h_rc = np.argwhere(heatmap.h_tissue)
    if len(h_rc) == 0 or not geoms_l0:
        return np.zeros(0, np.int64), np.zeros((0, 2), np.int64), np.zeros(0, np.float32)
    tree = shapely.STRtree(shapely.points(heatmap.h_centres_l0(h_rc)))
    geom_idx, point_idx = tree.query(np.asarray(geoms_l0, dtype=object), predicate="intersects")
    return geom_idx, h_rc[point_idx], heatmap.h_prob[h_rc[point_idx, 0], h_rc[point_idx, 1]]


def max_value_inside(heatmap: Heatmap, geoms_l0: list[shapely.Geometry]) -> np.ndarray:
    """For each geometry, the highest heatmap value among the cells whose centres it covers (0 if none)."""
    geom_idx, _, values = _cells_inside(heatmap, geoms_l0)
    best = np.zeros(len(geoms_l0), np.float32)
    np.maximum.at(best, geom_idx, values)
    return best


def top_cells_inside(heatmap: Heatmap, geoms_l0: list[shapely.Geometry], k: int) -> np.ndarray:
    """Cells (M, 2 as row, col) that hold the ``k`` highest heatmap values inside each geometry (all of them
    where it covers fewer), without repeats: the cells a lesion's confirmation re-scores."""
    geom_idx, h_rc, values = _cells_inside(heatmap, geoms_l0)
    order = np.lexsort((-values, geom_idx))  # by geometry, then value descending
    geom_idx, h_rc = geom_idx[order], h_rc[order]
    rank = np.arange(len(geom_idx)) - np.searchsorted(geom_idx, geom_idx)  # position within its geometry
    return np.unique(h_rc[rank < k], axis=0).reshape(-1, 2)
