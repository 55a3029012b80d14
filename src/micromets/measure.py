"""Lesion measurement: grouping of deposits by a gap, exact maximum Feret diameter, area, fitted-ellipse axis.

All outlines are in level-0 pixels (``_l0``); ``l0_mpp`` (µm per level-0 pixel) turns them into mm.

Grouping rule
    Tumour deposits that lie within ``gap_um`` (default 75 µm) of each other are one lesion. This is the
    CAMELYON16 evaluation convention: the reference mask is dilated by 75 µm / 2 (about five tumour cells) so
    that outlines closer than 75 µm merge into one lesion (Bejnordi et al., JAMA 2017;318:2199-2210, and the
    challenge's ``Evaluation_FROC.py``). Two shapes dilated by ``gap/2`` each overlap or touch exactly when their
    distance is ``<= gap``; the union of the dilated shapes is therefore connected exactly over the chains of
    outline pairs with ``distance <= gap``. We compute those chains from the exact pairwise distances
    (``STRtree.query(..., predicate="dwithin")``), which equals dilate-and-union without the polygonal
    approximation of a buffer. Boundary: a distance of exactly ``gap_um`` joins.

    The lesion is then measured on the ORIGINAL member outlines (their union), never on the dilated shape
    and never by eroding the dilated shape back (erosion would split the very clusters the rule joins).

Largest diameter
    The maximum Feret (caliper) diameter: the largest distance between two points of the lesion. It is attained
    at two vertices of the convex hull of all member outlines (Preparata & Shamos, "Computational Geometry",
    1985, ch. 4), so it is found exactly by rotating calipers over the hull's antipodal vertex pairs, in time
    linear in the hull's size. This is the "largest
    dimension" of a deposit that AJCC 8 sizes (a cluster of deposits is measured across the cluster when they
    are grouped).

Fitted-ellipse major axis
    For comparison with CAMELYON16, whose ITC rule uses ``skimage.measure.regionprops(...).major_axis_length``:
    ``4 * sqrt(largest eigenvalue)`` of the second central moments of the lesion's area. Here the moments are the
    exact area integrals of the polygons (Green's theorem), so a disc of diameter d gives exactly d.

Invalid outlines (self-intersections, bow ties) are repaired with ``shapely.make_valid(method="structure",
keep_collapsed=False)`` (rings unioned, holes subtracted, collapsed spikes dropped: an area-preserving repair, 18x
faster than the "linework" method on the CAMELYON16 outlines, areas within 0.2 %) and the lesion is flagged
``repaired=True``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

import numpy as np
import shapely
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from shapely.geometry.base import BaseGeometry

from micromets.errors import MicrometsError

#: CAMELYON16 grouping gap: deposits closer than this are one lesion (µm).
DEFAULT_GAP_UM = 75.0

_POLYGON_TYPE_ID = 3


def repair(geoms):
    """Valid polygonal version of (an array of) geometries: ``make_valid`` by the "structure" method."""
    return shapely.make_valid(geoms, method="structure", keep_collapsed=False)


@dataclass(frozen=True)
class LesionMeasure:
    """One lesion (a group of deposits within the gap) and its sizes.

    ``geometry_l0`` is the union of the original member outlines in level-0 pixels (not the dilated shape);
    ``n_members`` counts the input outlines in the lesion.
    ``feret_l0`` holds the two level-0 points whose distance is ``diameter_mm``.
    """

    geometry_l0: BaseGeometry
    n_members: int
    diameter_mm: float
    area_mm2: float
    ellipse_major_mm: float
    repaired: bool
    feret_l0: tuple[tuple[float, float], tuple[float, float]]


def _as_geometry(item, index: int) -> BaseGeometry:
    if isinstance(item, BaseGeometry):
        return item
    coords = np.asarray(item, dtype=float)
    if coords.ndim != 2 or coords.shape[1] != 2:
        raise MicrometsError(f"outline {index}: expected an (n, 2) array of level-0 x, y, got shape {coords.shape}")
    if not np.isfinite(coords).all():
        raise MicrometsError(f"outline {index}: coordinates must be finite numbers")
    if len(coords) < 3:
        raise MicrometsError(f"outline {index}: a polygon needs at least 3 vertices, got {len(coords)}")
    return shapely.Polygon(coords)


def _polygon_parts(geoms_l0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split the input into valid polygon parts; returns (parts, repaired flag per part, input index per part)."""
    geoms = np.array([_as_geometry(g, i) for i, g in enumerate(geoms_l0)], dtype=object)
    if len(geoms) == 0:
        return np.empty(0, dtype=object), np.empty(0, dtype=bool), np.empty(0, dtype=int)
    if not np.isfinite(shapely.get_coordinates(geoms)).all():
        raise MicrometsError("outline coordinates must be finite numbers")
    invalid = ~shapely.is_valid(geoms)
    fixed = geoms.copy()
    fixed[invalid] = repair(geoms[invalid])
    parts, source = shapely.get_parts(fixed, return_index=True)
    # a repaired outline can nest (a collection holding a MultiPolygon): explode one level more
    parts, inner = shapely.get_parts(parts, return_index=True)
    source = source[inner]
    keep = (shapely.get_type_id(parts) == _POLYGON_TYPE_ID) & (shapely.area(parts) > 0)
    empty = np.setdiff1d(np.arange(len(geoms)), source[keep])
    if len(empty):
        raise MicrometsError(f"outline {int(empty[0])} is empty or has no area (vertices all on one line?)")
    return parts[keep], invalid[source[keep]], source[keep]


def group_by_gap(parts_l0: np.ndarray, gap_l0: float) -> np.ndarray:
    """Group label per polygon: chains of polygons with pairwise distance ``<= gap_l0`` (level-0 px) share one."""
    n = len(parts_l0)
    if n == 0:
        return np.empty(0, dtype=int)
    tree = shapely.STRtree(parts_l0)
    left, right = tree.query(parts_l0, predicate="dwithin", distance=gap_l0)
    graph = coo_matrix((np.ones(len(left), dtype=bool), (left, right)), shape=(n, n))
    return connected_components(graph, directed=False)[1]


def hull_vertices(geom: BaseGeometry) -> np.ndarray:
    """Vertices (k, 2) of the convex hull of ``geom``, without the closing repeat."""
    hull = shapely.convex_hull(geom)
    if isinstance(hull, shapely.Polygon):
        return np.asarray(hull.exterior.coords)[:-1]
    return np.unique(shapely.get_coordinates(hull), axis=0)


def max_feret(points: np.ndarray) -> tuple[float, int, int]:
    """Exact maximum Feret diameter of a convex polygon's vertices: the largest distance between two of them.

    ``points`` (k, 2) are a lesion's hull vertices (`hull_vertices`: in order around the hull, no repeat).
    Returns the diameter (same unit as the points) and the indices of its two end points. Rotating calipers
    (Shamos 1978): the diameter joins an antipodal pair, and walking the edges in order, the vertex farthest
    from each edge's line only moves forward, so all antipodal pairs are visited in O(k). Each edge checks its
    farthest vertex and the next one, so a tie (parallel edges) or a rounding error in the comparison cannot
    skip the true pair. A 200,000-vertex circle takes about 0.3 s (the former all-pairs pass took minutes and
    6.5 GB).
    """
    xy = np.asarray(points, dtype=float)
    index = np.arange(len(xy))
    if len(xy) > 3:  # drop vertices within 1e-12 of the hull's size of the next one: their edge has no direction
        span = float(np.ptp(xy, axis=0).max())
        apart = np.hypot(*(np.roll(xy, -1, axis=0) - xy).T) > 1e-12 * span
        if 2 <= apart.sum() < len(xy):
            xy, index = xy[apart], index[apart]
    k = len(xy)
    if k < 2:
        return 0.0, 0, 0
    if k <= 3:
        d2 = ((xy[:, None, :] - xy[None, :, :]) ** 2).sum(-1)
        i, j = np.unravel_index(int(np.argmax(d2)), d2.shape)
        return math.sqrt(float(d2[i, j])), int(index[i]), int(index[j])
    order = np.arange(k)
    if (xy[:, 0] * np.roll(xy[:, 1], -1) - np.roll(xy[:, 0], -1) * xy[:, 1]).sum() < 0:
        order = order[::-1]  # the walk below needs counter-clockwise order (y up)
    xs, ys = xy[order, 0].tolist(), xy[order, 1].tolist()
    best, best_pair = -1.0, (0, 0)
    j = 1
    for i in range(k):
        i1 = (i + 1) % k
        ex, ey = xs[i1] - xs[i], ys[i1] - ys[i]
        steps = 0
        while steps < k:  # advance while the next vertex is farther from the line of edge i
            j1 = (j + 1) % k
            if ex * (ys[j1] - ys[j]) - ey * (xs[j1] - xs[j]) <= 0:
                break
            j, steps = j1, steps + 1
        for a in (i, i1):
            for b in (j, (j + 1) % k):
                dx, dy = xs[a] - xs[b], ys[a] - ys[b]
                d2 = dx * dx + dy * dy  # inf on overflow (float ** 2 raises OverflowError)
                if d2 > best:
                    best, best_pair = d2, (a, b)
    return math.sqrt(best), int(index[order[best_pair[0]]]), int(index[order[best_pair[1]]])


def area_moments(geom: BaseGeometry) -> tuple[float, np.ndarray, np.ndarray]:
    """Exact area, centroid (x, y) and 2x2 central second-moment matrix (per unit area) of a polygonal geometry.

    Green's theorem over every ring; exteriors counter-clockwise and holes clockwise so that holes subtract.
    """
    oriented = shapely.orient_polygons(geom, exterior_cw=False)
    rings = shapely.get_rings(shapely.get_parts(oriented))
    coords, ring_index = shapely.get_coordinates(rings, return_index=True)
    shift = coords.mean(axis=0)
    coords = coords - shift
    same = ring_index[:-1] == ring_index[1:]
    x0, y0 = coords[:-1][same].T
    x1, y1 = coords[1:][same].T
    cross = x0 * y1 - x1 * y0
    area = cross.sum() / 2
    if area <= 0:
        raise MicrometsError("lesion outline has no area")
    cx = ((x0 + x1) * cross).sum() / (6 * area)
    cy = ((y0 + y1) * cross).sum() / (6 * area)
    sxx = ((x0 * x0 + x0 * x1 + x1 * x1) * cross).sum() / (12 * area) - cx * cx
    syy = ((y0 * y0 + y0 * y1 + y1 * y1) * cross).sum() / (12 * area) - cy * cy
    sxy = ((x0 * y1 + 2 * x0 * y0 + 2 * x1 * y1 + x1 * y0) * cross).sum() / (24 * area) - cx * cy
    return float(area), np.array([cx, cy]) + shift, np.array([[sxx, sxy], [sxy, syy]])


def ellipse_major_axis(geom: BaseGeometry) -> float:
    """Major axis of the ellipse with the same second moments as the area of ``geom`` (unit of the coordinates)."""
    _, _, cov = area_moments(geom)
    return 4.0 * math.sqrt(max(float(np.linalg.eigvalsh(cov)[-1]), 0.0))


def measure_lesions(geoms_l0: Iterable, l0_mpp: float, gap_um: float = DEFAULT_GAP_UM) -> list[LesionMeasure]:
    """Group outlines closer than ``gap_um`` into lesions and measure each lesion.

    Parameters
    ----------
    geoms_l0 : iterable of shapely (Multi)Polygons or (n, 2) arrays of level-0 pixel x, y
        Deposit outlines. Invalid ones are repaired (``make_valid``) and flagged, not refused.
    l0_mpp : float
        µm per level-0 pixel.
    gap_um : float
        Outlines at a distance ``<= gap_um`` belong to one lesion (CAMELYON16: 75 µm).

    Returns
    -------
    list of LesionMeasure, largest maximum Feret diameter first.
    """
    _check_l0_mpp(l0_mpp)
    if not (math.isfinite(gap_um) and gap_um >= 0):
        raise MicrometsError(f"gap_um must be >= 0 µm, got {gap_um!r}")
    parts, repaired, source = _polygon_parts(geoms_l0)
    labels = group_by_gap(parts, gap_um / l0_mpp)
    lesions = [_measure(parts[members], repaired[members], source[members], l0_mpp)
               for members in (labels == label for label in np.unique(labels))]
    return sorted(lesions, key=lambda lesion: lesion.diameter_mm, reverse=True)


def measure_lesion(geoms_l0: Iterable, l0_mpp: float) -> LesionMeasure:
    """All of ``geoms_l0`` (as :func:`measure_lesions` takes them, at least one) measured as one lesion, however far
    apart they lie: for outlines already known to be one deposit (the parts of a refined outline)."""
    _check_l0_mpp(l0_mpp)
    parts, repaired, source = _polygon_parts(geoms_l0)
    if len(parts) == 0:
        raise MicrometsError("a lesion needs at least one outline")
    return _measure(parts, repaired, source, l0_mpp)


def _check_l0_mpp(l0_mpp: float) -> None:
    if not (isinstance(l0_mpp, (int, float)) and math.isfinite(l0_mpp) and l0_mpp > 0):
        raise MicrometsError(f"l0_mpp must be a positive number of µm per pixel, got {l0_mpp!r}")


def _measure(parts: np.ndarray, repaired: np.ndarray, source: np.ndarray, l0_mpp: float) -> LesionMeasure:
    """One lesion of polygon ``parts`` (with their repaired flags and input indices, :func:`_polygon_parts`)."""
    mm_per_px = l0_mpp / 1000.0
    geometry = shapely.union_all(parts)
    hull = hull_vertices(geometry)
    diameter_px, a, b = max_feret(hull)
    return LesionMeasure(
        geometry_l0=geometry,
        n_members=len(np.unique(source)),
        diameter_mm=diameter_px * mm_per_px,
        area_mm2=geometry.area * mm_per_px**2,
        ellipse_major_mm=ellipse_major_axis(geometry) * mm_per_px,
        repaired=bool(repaired.any()),
        feret_l0=(tuple(map(float, hull[a])), tuple(map(float, hull[b]))),
    )


def mask_to_polygons_l0(
    mask: np.ndarray, mask_mpp: float, l0_mpp: float, l0_origin: tuple[float, float] = (0.0, 0.0)
) -> list[shapely.Polygon]:
    """Outlines of the 8-connected foreground components of a boolean mask, as level-0 pixel (Multi)Polygons.

    Mask pixel (r, c) covers level-0 x in ``[ox + c*s, ox + (c+1)*s)`` and y likewise, with
    ``s = mask_mpp / l0_mpp`` (the heatmap-cell convention of DESIGN.md). The outline is the 0.5 iso-line
    (marching squares, ``skimage.measure.find_contours``), which runs through the mid-points of the pixel edges
    between foreground and background: it lies within half a mask pixel of the pixel boundary. Holes are kept
    as polygon interiors.
    """
    from skimage.measure import find_contours, label, regionprops

    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2:
        raise MicrometsError(f"mask must be 2-D, got shape {mask.shape}")
    if not (mask_mpp > 0 and l0_mpp > 0):
        raise MicrometsError(f"mask_mpp and l0_mpp must be > 0, got {mask_mpp!r}, {l0_mpp!r}")
    scale = mask_mpp / l0_mpp
    ox, oy = l0_origin
    polygons = []
    for region in regionprops(label(mask, connectivity=2)):
        r0, c0, _, _ = region.bbox
        padded = np.pad(region.image, 1)
        rings = []
        for contour in find_contours(padded.astype(np.uint8), 0.5, fully_connected="high"):
            rows = contour[:, 0] + r0 - 1
            cols = contour[:, 1] + c0 - 1
            ring = np.column_stack([ox + (cols + 0.5) * scale, oy + (rows + 0.5) * scale])
            rings.append(ring)
        rings.sort(key=lambda ring: shapely.area(shapely.Polygon(ring)), reverse=True)
        shell, holes = rings[0], [ring for ring in rings[1:] if len(ring) >= 4]
        polygons.append(repair(shapely.Polygon(shell, holes)))
    return polygons


def rasterize_l0(
    geoms_l0, shape: tuple[int, int], mask_mpp: float, l0_mpp: float, l0_origin: tuple[float, float] = (0.0, 0.0)
) -> np.ndarray:
    """Boolean mask of ``shape`` (rows, cols): True where the pixel centre lies inside one of the outlines.

    The inverse plane mapping of :func:`mask_to_polygons_l0`: mask pixel (r, c) covers level-0 x in
    ``[ox + c*s, ox + (c+1)*s)``, ``s = mask_mpp / l0_mpp``; its centre is at ``ox + (c + 0.5) * s``. Exact point in
    polygon tests (``shapely.contains_xy``; holes respected), evaluated only inside each outline's bounding box.
    """
    rows, cols = shape
    mask = np.zeros((rows, cols), dtype=bool)
    scale = mask_mpp / l0_mpp
    ox, oy = l0_origin
    for geom in geoms_l0:
        if geom.is_empty:
            continue
        minx, miny, maxx, maxy = geom.bounds
        c0 = max(0, int(math.floor((minx - ox) / scale - 0.5)))
        c1 = min(cols, int(math.ceil((maxx - ox) / scale - 0.5)) + 1)
        r0 = max(0, int(math.floor((miny - oy) / scale - 0.5)))
        r1 = min(rows, int(math.ceil((maxy - oy) / scale - 0.5)) + 1)
        if c0 >= c1 or r0 >= r1:
            continue
        cc, rr = np.meshgrid(np.arange(c0, c1), np.arange(r0, r1))
        inside = shapely.contains_xy(geom, ox + (cc + 0.5) * scale, oy + (rr + 0.5) * scale)
        mask[r0:r1, c0:c1] |= inside
    return mask
