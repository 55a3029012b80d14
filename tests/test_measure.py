"""Lesion grouping by gap, exact maximum Feret diameter, area and fitted-ellipse axis."""

import math

import numpy as np
import pytest
import shapely
from hypothesis import example, given, settings
from hypothesis import strategies as st

from micromets.errors import MicrometsError
from micromets.measure import (
    ellipse_major_axis,
    hull_vertices,
    mask_to_polygons_l0,
    max_feret,
    measure_lesion,
    measure_lesions,
    rasterize_l0,
    repair,
)


def brute_force_diameter(geom) -> float:
    """Maximum distance over all vertex pairs (the definition, O(n^2))."""
    xy = shapely.get_coordinates(geom)
    diff = xy[:, None, :] - xy[None, :, :]
    return float(np.sqrt((diff**2).sum(-1)).max())


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.floats(-1e4, 1e4), st.floats(-1e4, 1e4)), min_size=1, max_size=60))
@example([(0.0, 1.0), (0.0, -1.0), (1.0, 0.0), (1.0, 6.607629857794307e-213)])  # near-duplicate hull vertex
@example([(0.0, 1.0), (0.0, -1.0), (0.0, -1.2337772480986163e-188), (0.0, -7.993281890927967e-199), (1.0, 0.0),
          (-1.2461054687772868e-221, 0.0)])  # two near-duplicates that GEOS orders as a dent in the hull
def test_max_feret_equals_brute_force(points):
    """The diameter of the hull vertices is the diameter of every point; the examples once stalled rotating
    calipers (a zero-length hull edge; a hull with a dent 1e-199 deep), which found 1.414 instead of 2."""
    geom = shapely.MultiPoint(points)
    hull = hull_vertices(geom)
    diameter, a, b = max_feret(hull)
    assert diameter == pytest.approx(brute_force_diameter(geom), rel=1e-12, abs=1e-9)
    assert np.hypot(*(hull[a] - hull[b])) == pytest.approx(diameter)


def test_square_and_disc_sizes():
    mpp = 0.5
    square = shapely.box(0, 0, 1000, 1000)  # 0.5 mm side
    [lesion] = measure_lesions([square], mpp)
    assert lesion.diameter_mm == pytest.approx(0.5 * math.sqrt(2))
    assert lesion.area_mm2 == pytest.approx(0.25)
    assert lesion.n_members == 1 and not lesion.repaired
    disc = shapely.Point(0, 0).buffer(500, quad_segs=256)  # diameter 1000 px = 0.5 mm
    assert ellipse_major_axis(disc) == pytest.approx(1000, rel=1e-4)
    # an ellipse with semi-axes 300 and 100 px: moment-fitted major axis is 600 px
    ellipse = shapely.affinity.scale(shapely.Point(0, 0).buffer(1, quad_segs=512), 300, 100)
    assert ellipse_major_axis(ellipse) == pytest.approx(600, rel=1e-4)


def test_holes_subtract_from_area_not_from_feret():
    ring = shapely.box(0, 0, 100, 100).difference(shapely.box(25, 25, 75, 75))
    [lesion] = measure_lesions([ring], 1.0)
    assert lesion.area_mm2 == pytest.approx((100**2 - 50**2) * 1e-6)
    assert lesion.diameter_mm == pytest.approx(100 * math.sqrt(2) / 1000)


def test_gap_boundary_is_inclusive():
    mpp = 0.25  # 75 µm = 300 px
    left = shapely.box(0, 0, 100, 100)
    at_gap = shapely.box(400, 0, 500, 100)  # 300 px apart: joins
    beyond = shapely.box(400.5, 0, 500, 100)  # 300.5 px: separate
    joined = measure_lesions([left, at_gap], mpp)
    assert len(joined) == 1 and joined[0].n_members == 2
    # the joined lesion is measured on the original outlines: corner to corner across the gap
    assert joined[0].diameter_mm == pytest.approx(math.hypot(500, 100) * mpp / 1000)
    assert joined[0].area_mm2 == pytest.approx(2 * 100 * 100 * mpp**2 / 1e6)
    assert len(measure_lesions([left, beyond], mpp)) == 2
    assert len(measure_lesions([left, at_gap], mpp, gap_um=0)) == 2


def test_measure_lesion_takes_every_outline_as_one_lesion_however_far_apart():
    """Outlines known to be one deposit are measured together, as measure_lesions measures a group."""
    mpp = 0.25
    left, far = shapely.box(0, 0, 100, 100), shapely.box(4000, 0, 4100, 100)  # 975 µm apart
    lesion = measure_lesion([left, far], mpp)
    assert lesion.n_members == 2 and lesion.diameter_mm == pytest.approx(math.hypot(4100, 100) * mpp / 1000)
    assert lesion == measure_lesions([left, far], mpp, gap_um=1000)[0]
    with pytest.raises(MicrometsError):
        measure_lesion([], mpp)
    with pytest.raises(MicrometsError):
        measure_lesion([left], 0.0)


def test_grouping_is_transitive_and_sorted():
    mpp = 1.0
    chain = [shapely.box(i * 150, 0, i * 150 + 100, 100) for i in range(4)]  # 50 µm gaps
    far = shapely.box(10_000, 0, 10_050, 50)
    lesions = measure_lesions(chain + [far], mpp)
    assert [lesion.n_members for lesion in lesions] == [4, 1]
    assert lesions[0].diameter_mm > lesions[1].diameter_mm


def test_invalid_outline_is_repaired_and_flagged():
    bow_tie = np.array([[0, 0], [100, 100], [100, 0], [0, 100]], dtype=float)
    [lesion] = measure_lesions([bow_tie], 1.0)
    assert lesion.repaired and lesion.n_members == 1
    assert lesion.area_mm2 == pytest.approx(2 * 0.5 * 100 * 50 * 1e-6)
    assert lesion.diameter_mm == pytest.approx(100 * math.sqrt(2) / 1000)


@pytest.mark.parametrize(
    ("geoms", "mpp", "gap", "message"),
    [
        ([np.array([[0, 0], [1, 1]])], 1.0, 75, "at least 3"),
        ([np.array([[0, 0], [1, 1], [2, 2]])], 1.0, 75, "no area"),
        ([shapely.Polygon()], 1.0, 75, "empty"),
        ([shapely.box(0, 0, 1, 1)], 0.0, 75, "l0_mpp"),
        ([shapely.box(0, 0, 1, 1)], 1.0, -1, "gap_um"),
        ([np.array([[0, 0], [1, np.nan], [2, 0]])], 1.0, 75, "finite"),
    ],
)
def test_bad_outlines_raise(geoms, mpp, gap, message):
    with pytest.raises(MicrometsError, match=message):
        measure_lesions(geoms, mpp, gap)


def test_no_outlines_no_lesions():
    assert measure_lesions([], 0.243) == []


def test_mask_to_polygons_l0_geometry():
    mask = np.zeros((20, 30), dtype=bool)
    mask[2:12, 5:25] = True  # 10 x 20 cells
    mask[5:8, 10:15] = False  # a hole
    mask[15, 2] = True  # a single cell
    polygons = mask_to_polygons_l0(mask, mask_mpp=8.0, l0_mpp=0.25, l0_origin=(1000, 2000))
    assert len(polygons) == 2
    big = max(polygons, key=lambda p: p.area)
    scale = 8.0 / 0.25
    minx, miny, maxx, maxy = big.bounds
    # the 0.5 iso-line runs through the pixel-edge mid-points: the box edges exactly
    assert (minx, miny, maxx, maxy) == pytest.approx(
        (1000 + 5 * scale, 2000 + 2 * scale, 1000 + 25 * scale, 2000 + 12 * scale)
    )
    assert len(big.interiors) == 1
    single = min(polygons, key=lambda p: p.area)
    assert single.centroid.x == pytest.approx(1000 + 2.5 * scale)
    assert single.centroid.y == pytest.approx(2000 + 15.5 * scale)



# ---------------------------------------------------------------- real CAMELYON16 reference outlines

CAMELYON16_MPP = 0.243  # level-0 µm/px of the CAMELYON16 scans
RASTER_MPP = 8.0  # the heatmap route: outlines rasterised at 8 µm/px


def _pairwise_max_sq(a, b):
    best = 0.0
    for i in range(0, len(a), 256):
        best = max(best, float(((a[i : i + 256, None, :] - b[None, :, :]) ** 2).sum(-1).max()))
    return best


def brute_force_max_vertex_distance(xy, grid=32):
    """max |p - q| over all vertex pairs; cell pairs whose bounding boxes cannot beat the best pair so far are
    skipped (an exact pruning by bounding-box distance, no convex hull involved)."""
    xy = np.unique(xy, axis=0)
    if len(xy) <= 2000:
        return math.sqrt(_pairwise_max_sq(xy, xy))
    lo = xy.min(0)
    size = (xy.max(0) - lo) / grid * (1 + 1e-9) + 1e-12
    cell = np.floor((xy - lo) / size).astype(int)
    cid = cell[:, 0] * grid + cell[:, 1]
    order = np.argsort(cid, kind="stable")
    xy, cid = xy[order], cid[order]
    _, starts = np.unique(cid, return_index=True)
    ends = np.append(starts[1:], len(xy))
    bmin, bmax = np.minimum.reduceat(xy, starts), np.maximum.reduceat(xy, starts)
    best = _pairwise_max_sq(xy[starts], xy[starts])
    dx = np.maximum(bmax[:, None, 0] - bmin[None, :, 0], bmax[None, :, 0] - bmin[:, None, 0])
    dy = np.maximum(bmax[:, None, 1] - bmin[None, :, 1], bmax[None, :, 1] - bmin[:, None, 1])
    upper = np.triu(dx**2 + dy**2)
    ii, jj = np.nonzero(upper >= best)
    for k in np.argsort(-upper[ii, jj]):
        i, j = ii[k], jj[k]
        if upper[i, j] < best:
            break
        best = max(best, _pairwise_max_sq(xy[starts[i] : ends[i]], xy[starts[j] : ends[j]]))
    return math.sqrt(best)


def test_brute_force_helper_is_exact():
    rng = np.random.default_rng(0)
    xy = rng.normal(size=(5000, 2)) * [3000, 1000]
    hull = hull_vertices(shapely.MultiPoint(xy))
    assert brute_force_max_vertex_distance(xy) == pytest.approx(max_feret(hull)[0], rel=1e-12)
    assert brute_force_max_vertex_distance(xy) == pytest.approx(math.sqrt(_pairwise_max_sq(xy, xy)), rel=1e-12)


@pytest.fixture(scope="module")
def camelyon16_measured(shared_data):
    """{slide: (annotations, outlines, lesions)} for every CAMELYON16 polygon file."""
    from micromets.annotations import read_annotations

    out = {}
    for path in sorted((shared_data / "camelyon16_polygons").glob("*.json")):
        annotation = read_annotations(path, "camelyon16-json")
        outlines = annotation.geometries_l0()
        out[path.stem] = (annotation, outlines, measure_lesions(outlines, CAMELYON16_MPP))
    assert len(out) == 55
    return out


def test_camelyon16_feret_equals_brute_force(camelyon16_measured, artifacts):
    from micromets.rules.ajcc8 import node_class

    rows = ["slide,n_lesions,largest_diameter_mm,largest_area_mm2,ellipse_major_mm,node_class"]
    for slide, (_, outlines, lesions) in camelyon16_measured.items():
        assert lesions, slide
        for lesion in lesions:
            brute = brute_force_max_vertex_distance(shapely.get_coordinates(lesion.geometry_l0))
            assert lesion.diameter_mm == pytest.approx(brute * CAMELYON16_MPP / 1000, rel=1e-12), slide
        largest = lesions[0]
        rows.append(
            f"{slide},{len(lesions)},{largest.diameter_mm:.4f},{largest.area_mm2:.4f},"
            f"{largest.ellipse_major_mm:.4f},{node_class(largest.diameter_mm)}"
        )
    (artifacts / "camelyon16_measure_table.csv").write_text("\n".join(rows) + "\n")


def test_camelyon16_grouping_equals_dilate_and_union(camelyon16_measured):
    """The gap rule computed literally (dilate every outline by 75/2 µm, union, components) on the slides with
    several small deposits gives the same lesions as the exact distance chains."""
    for slide in ("Tumor_008", "Tumor_010", "Tumor_017", "Tumor_028", "Tumor_035", "Tumor_040", "Tumor_048"):
        _, outlines, lesions = camelyon16_measured[slide]
        parts = shapely.get_parts(repair(np.array(outlines, dtype=object)))
        blobs = shapely.get_parts(shapely.union_all(shapely.buffer(parts, 75 / CAMELYON16_MPP / 2, quad_segs=32)))
        assert len(blobs) == len(lesions), slide
        inside = shapely.intersection(blobs, shapely.union_all(parts))
        blob_areas = sorted(shapely.area(inside) * (CAMELYON16_MPP / 1000) ** 2)
        assert blob_areas == pytest.approx(sorted(lesion.area_mm2 for lesion in lesions), rel=1e-9), slide


def test_camelyon16_raster_route_same_class(camelyon16_measured):
    """outline → mask at 8 µm/px → iso-line polygons → lesions: same AJCC class as the exact outlines, except
    where the exact diameter lies within one mask pixel of 0.2 or 2.0 mm."""
    from micromets.rules.ajcc8 import node_class

    pixel_mm = RASTER_MPP / 1000
    for slide, (_, outlines, lesions) in camelyon16_measured.items():
        valid = list(repair(np.array(outlines, dtype=object)))
        minx, miny, maxx, maxy = shapely.total_bounds(np.array(valid, dtype=object))
        step = RASTER_MPP / CAMELYON16_MPP
        origin = (minx - 4 * step, miny - 4 * step)
        shape = (int((maxy - origin[1]) / step) + 5, int((maxx - origin[0]) / step) + 5)
        mask = rasterize_l0(valid, shape, RASTER_MPP, CAMELYON16_MPP, origin)
        raster = measure_lesions(mask_to_polygons_l0(mask, RASTER_MPP, CAMELYON16_MPP, origin), CAMELYON16_MPP)
        exact_mm, raster_mm = lesions[0].diameter_mm, raster[0].diameter_mm
        assert abs(raster_mm - exact_mm) <= 2 * pixel_mm, slide
        near_boundary = min(abs(exact_mm - 0.2), abs(exact_mm - 2.0)) <= pixel_mm
        if not near_boundary:
            assert node_class(raster_mm) == node_class(exact_mm), slide


def test_rasterize_round_trip_geometry():
    square = shapely.box(100, 100, 740, 420)  # 640 x 320 level-0 px = 20 x 10 cells of 32 px
    mask = rasterize_l0([square], (20, 30), mask_mpp=8.0, l0_mpp=0.25)
    assert mask.sum() == 20 * 10
    [back] = mask_to_polygons_l0(mask, 8.0, 0.25)
    assert back.symmetric_difference(square).area / square.area < 0.06


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 2000), st.integers(0, 2000), st.integers(1, 200), st.integers(1, 200)),
             min_size=1, max_size=12),
    st.floats(0, 150),
)
def test_grouping_equals_pairwise_distance_closure(boxes, gap_um):
    """Lesions = connected components of the graph 'distance <= gap' (checked by a plain union-find)."""
    geoms = [shapely.box(x, y, x + w, y + h) for x, y, w, h in boxes]
    parent = list(range(len(geoms)))

    def find(i):
        while parent[i] != i:
            i = parent[i]
        return i

    for i in range(len(geoms)):
        for j in range(i):
            if geoms[i].distance(geoms[j]) <= gap_um:  # l0_mpp = 1: px = µm
                parent[find(i)] = find(j)
    groups = {}
    for i in range(len(geoms)):
        groups.setdefault(find(i), []).append(i)
    expected = sorted(shapely.union_all([geoms[i] for i in g]).area for g in groups.values())
    lesions = measure_lesions(geoms, 1.0, gap_um)
    assert sorted(lesion.area_mm2 * 1e6 for lesion in lesions) == pytest.approx(expected)
    assert sum(lesion.n_members for lesion in lesions) == len(geoms)


def _all_pairs_feret(xy: np.ndarray) -> float:
    return float(np.sqrt(((xy[:, None, :] - xy[None, :, :]) ** 2).sum(-1).max()))


@pytest.mark.parametrize("seed", range(40))
def test_rotating_calipers_equal_the_all_pairs_diameter(seed):
    """Random hulls (random points, regular polygons with parallel edges, rectangles, both orientations)."""
    rng = np.random.default_rng(seed)
    kind = seed % 4
    if kind == 0:
        pts = rng.normal(size=(int(rng.integers(3, 400)), 2)) * rng.uniform(1, 1e5)
    elif kind == 1:
        n = int(rng.integers(3, 64))
        a = np.arange(n) * 2 * np.pi / n + rng.uniform(0, 1)
        pts = np.c_[np.cos(a), np.sin(a)] * 1000 + rng.uniform(-1e4, 1e4, 2)
    elif kind == 2:
        w, h = rng.integers(1, 1000, 2)
        pts = np.array([[0, 0], [w, 0], [w, h], [0, h]], float) + rng.integers(0, 1e6, 2)
    else:
        pts = rng.integers(0, 20, size=(int(rng.integers(3, 60)), 2)).astype(float)  # many ties on a grid
    geom = shapely.MultiPoint(pts).convex_hull
    hull = hull_vertices(geom)
    if seed % 2:
        hull = hull[::-1]
    diameter, a, b = max_feret(hull)
    assert diameter == pytest.approx(_all_pairs_feret(hull), rel=1e-12)
    assert np.hypot(*(hull[a] - hull[b])) == pytest.approx(diameter, rel=1e-12)


def test_a_200k_vertex_outline_is_measured_in_seconds():
    """Issue 16: a 200k-vertex outline made `measure` run for minutes at 6.5 GB (all pairs of hull vertices)."""
    import time

    n = 200_000
    a = np.arange(n) * 2 * np.pi / n
    ring = np.c_[np.cos(a), np.sin(a)] * 40_000 + 50_000  # every vertex is on the hull
    start = time.monotonic()
    (lesion,) = measure_lesions([ring], l0_mpp=0.25)
    assert time.monotonic() - start < 10
    assert lesion.diameter_mm == pytest.approx(80_000 * 0.25 / 1000, rel=1e-6)
