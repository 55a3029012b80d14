"""Phantom slides: the pyramid writer, ground truth, prescribed lesion sizes."""

import numpy as np
import openslide
import pytest

from micromets.errors import MicrometsError
from micromets.phantom.pyramid import pyramid_level_dimensions, write_pyramid


def _gradient(l0_x, l0_y, l0_w, l0_h):
    yy, xx = np.mgrid[l0_y:l0_y + l0_h, l0_x:l0_x + l0_w]
    rgb = np.empty((l0_h, l0_w, 3), np.uint8)
    rgb[..., 0] = xx % 256
    rgb[..., 1] = yy % 256
    rgb[..., 2] = 128
    return rgb


def test_pyramid_opens_in_openslide_with_mpp_levels_and_pixels(tmp_path):
    path = tmp_path / "g.tiff"
    dims = write_pyramid(path, 1300, 1000, 0.243, _gradient, tile_px=256, chunk_px=512)  # 3 windows per row
    assert dims == [(1300, 1000), (650, 500), (325, 250), (163, 125)]
    with openslide.OpenSlide(str(path)) as slide:
        assert slide.properties["openslide.vendor"] == "generic-tiff"
        assert float(slide.properties["openslide.mpp-x"]) == pytest.approx(0.243, rel=1e-6)
        assert float(slide.properties["openslide.mpp-y"]) == pytest.approx(0.243, rel=1e-6)
        assert slide.level_dimensions == tuple(dims)
        l0 = np.asarray(slide.read_region((1000, 700), 0, (300, 300)).convert("RGB")).astype(int)
        expected = _gradient(1000, 700, 300, 300).astype(int)
        assert np.abs(l0 - expected).mean() < 3  # JPEG q80 error only
        l1 = np.asarray(slide.read_region((0, 0), 1, (64, 64)).convert("RGB")).astype(int)
        expected_red = (2 * np.arange(64) + 0.5)  # mean of columns 2i and 2i+1 of level 0
        assert np.abs(l1[..., 0].mean(axis=0) - expected_red).max() < 4


def test_pyramid_levels_halve_until_one_tile():
    dims = pyramid_level_dimensions(100_000, 200_000, 256)
    assert len(dims) == 11 and dims[-1] == (98, 196) and dims[-2] == (196, 391)
    assert pyramid_level_dimensions(256, 256, 256) == [(256, 256)]


def test_pyramid_rejects_bad_arguments(tmp_path):
    with pytest.raises(MicrometsError, match="l0_mpp"):
        write_pyramid(tmp_path / "x.tiff", 10, 10, 0.0, _gradient)
    with pytest.raises(MicrometsError, match="tile_px"):
        write_pyramid(tmp_path / "x.tiff", 10, 10, 0.25, _gradient, tile_px=100)


# ---------------------------------------------------------------------------------------------------------------
# Phantoms. Tissue comes from the CC0 CAMELYON16 tiles bundled in src/micromets/data/tiles (normal: tumor_004 and
# tumor_064; tumour: tumor_001 and tumor_064). No detector runs in these tests, so no model sees these tiles here.
# ---------------------------------------------------------------------------------------------------------------

import csv  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import shapely  # noqa: E402

from micromets.annotations import read_asap_xml, read_geojson  # noqa: E402
from micromets.measure import mask_to_polygons_l0, measure_lesions  # noqa: E402
from micromets.normalise import macenko_stain_matrix  # noqa: E402
from micromets.phantom.build import CAPSULE_TILES, CAPSULE_TILES_MPP, build_phantom, read_phantom_manifest  # noqa: E402
from micromets.phantom.layout import LesionSpec, expected_node_class, make_layout, parse_lesions  # noqa: E402
from micromets.phantom.render import PhantomRenderer  # noqa: E402
from micromets.phantom.texture import TileLibrary, load_tiles, restain, synthesize  # noqa: E402

TILES = Path(__file__).resolve().parents[1] / "src" / "micromets" / "data" / "tiles"


@pytest.fixture(scope="module")
def libraries():
    normal = load_tiles(TILES / "normal", 0.243, 0.486)
    capsule = restain(load_tiles(CAPSULE_TILES, CAPSULE_TILES_MPP, 0.486), like=normal)
    return normal, load_tiles(TILES / "tumor", 0.243, 0.486), capsule


def _pixels(library: TileLibrary) -> np.ndarray:
    return np.concatenate([t.reshape(-1, 3) for t in library.tiles]).astype(np.uint8)[None]


def test_capsule_stroma_is_restained_to_the_normal_tiles_h_and_e(libraries):
    """The bundled colorectal stroma (another lab's eosin-heavy stain) takes the lymph-node tiles' stain vectors."""
    normal, _, capsule = libraries
    raw = load_tiles(CAPSULE_TILES, CAPSULE_TILES_MPP, 0.486)

    def angle_deg(a, b):
        return np.degrees(np.arccos(np.clip(np.sum(a * b, axis=1), -1, 1)))

    target = macenko_stain_matrix(_pixels(normal))
    assert angle_deg(macenko_stain_matrix(_pixels(raw)), target).max() > 5  # the source differs
    assert angle_deg(macenko_stain_matrix(_pixels(capsule)), target).max() < 2
    assert capsule.side_px == raw.side_px and capsule.names == raw.names


def test_small_phantom_opens_in_openslide_with_truth_and_manifest(tmp_path):
    row = build_phantom(tmp_path, TILES / "normal", TILES / "tumor", 0.243, "micro:1@0.4,itc:1@0.1", (1.4, 1.2),
                        l0_mpp=0.486, seed=5, name="p1")
    assert row["node_class"] == "micro" and row["n_lesions"] == 2
    with openslide.OpenSlide(str(tmp_path / "p1.tiff")) as slide:
        assert float(slide.properties["openslide.mpp-x"]) == pytest.approx(0.486)
        assert slide.dimensions == (round(1.4 * 1000 / 0.486), round(1.2 * 1000 / 0.486))
        assert slide.level_count == 5  # 2881 x 2469 halved until one 256 px tile holds it
        thumb = np.asarray(slide.get_thumbnail((200, 200)).convert("RGB")).astype(int)
        assert (thumb.sum(axis=-1) < 600).mean() > 0.3  # a stained node fills much of the slide
    rows = read_phantom_manifest(tmp_path / "manifest.csv")
    assert [r["name"] for r in rows] == ["p1"]
    assert sorted(float(d) for d in rows[0]["lesion_diameters_mm"].split(";")) == [0.1, 0.4]
    # a second phantom into the same folder adds a row; rebuilding p1 replaces its row
    build_phantom(tmp_path, TILES / "normal", TILES / "tumor", 0.243, "none", (0.6, 0.6), l0_mpp=0.972, seed=1,
                  name="p0")
    build_phantom(tmp_path, TILES / "normal", TILES / "tumor", 0.243, "itc:1@0.1", (1.4, 1.2), l0_mpp=0.972,
                  seed=5, name="p1")
    with open(tmp_path / "manifest.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["name"], r["node_class"]) for r in rows] == [("p0", "negative"), ("p1", "itc")]


def test_ground_truth_round_trips_through_asap_xml_and_geojson(tmp_path):
    build_phantom(tmp_path, TILES / "normal", TILES / "tumor", 0.243, "micro:2,itc:1", (4.0, 3.0), l0_mpp=1.944,
                  seed=3, name="rt", shape="blob")
    layout = make_layout((4.0, 3.0), 1.944, parse_lesions("micro:2,itc:1"), 3, "blob")
    truth = [les.outline_l0 for les in layout.lesions]
    for ann in (read_asap_xml(tmp_path / "rt.xml"), read_geojson(tmp_path / "rt.geojson")):
        assert len(ann.tumour) == 3
        for got, want in zip(ann.tumour, truth):
            assert shapely.equals_exact(got, want, tolerance=1e-9)
    measured = sorted(m.diameter_mm for m in measure_lesions(truth, 1.944))
    assert measured == pytest.approx(sorted(les.diameter_mm for les in layout.lesions), rel=1e-9)


@pytest.mark.parametrize("shape", ["disc", "blob"])
def test_rendered_lesion_has_the_prescribed_feret_diameter_within_one_pixel(shape):
    """Phantom at the tiles' own 0.243 µm/px, so one phantom pixel is one tile pixel."""
    mpp, diameter_mm = 0.243, 0.25
    layout = make_layout((0.8, 0.7), mpp, [LesionSpec("micro", diameter_mm)], seed=11, shape=shape)
    normal = load_tiles(TILES / "normal", 0.243, mpp)
    tumour = load_tiles(TILES / "tumor", 0.243, mpp)
    capsule = load_tiles(CAPSULE_TILES, CAPSULE_TILES_MPP, mpp)
    renderer = PhantomRenderer(layout, normal, tumour, capsule, seed=11)
    x0, y0, x1, y1 = (int(v) for v in layout.lesions[0].outline_l0.buffer(20).bounds)
    mask = renderer.lesion_mask(x0, y0, x1 - x0, y1 - y0)
    outlines = mask_to_polygons_l0(mask, mpp, mpp, (x0, y0))
    assert len(outlines) == 1
    measured_mm = measure_lesions(outlines, mpp)[0].diameter_mm
    assert abs(measured_mm - diameter_mm) <= mpp / 1000.0
    # the pixels inside the mask are tumour texture, the pixels outside are not
    rgb = renderer.render_region(x0, y0, x1 - x0, y1 - y0)
    tumour_rgb = np.clip(synthesize(tumour, x0, y0, x1 - x0, y1 - y0, 11, 1), 0, 255).astype(np.uint8)
    assert np.array_equal(rgb[mask], tumour_rgb[mask])
    assert np.abs(rgb[~mask].astype(int) - tumour_rgb[~mask]).mean() > 20


def test_capsule_is_drawn_from_the_capsule_library(libraries):
    """The outer CAPSULE_UM of the node is the (re-stained) stroma texture, stream 2; the cortex is not."""
    from micromets.phantom.render import _fill

    normal, tumour, capsule = libraries
    layout = make_layout((1.0, 0.8), 0.486, parse_lesions("none"), seed=4)
    renderer = PhantomRenderer(layout, normal, tumour, capsule, seed=4)
    x0, y0, _, _ = (int(v) for v in layout.node_l0.bounds)
    window = (x0, y0 + layout.l0_height // 4, 300, 300)  # across the node's left edge
    node, cortex = _fill(layout.node_l0, *window), _fill(layout.cortex_l0, *window)
    ring = node & ~cortex
    assert ring.sum() > 1000 and cortex.sum() > 1000
    rgb = renderer.render_region(*window)
    stroma = np.clip(synthesize(capsule, *window, 4, 2), 0, 255).astype(np.uint8)
    assert np.array_equal(rgb[ring], stroma[ring])
    assert np.abs(rgb[cortex].astype(int) - stroma[cortex]).mean() > 20


def test_rendering_is_deterministic_and_independent_of_windowing(libraries):
    normal, tumour, capsule = libraries
    layout = make_layout((1.0, 0.8), 0.486, parse_lesions("micro:1@0.3"), seed=2)
    renderer = PhantomRenderer(layout, normal, tumour, capsule, seed=2)
    whole = renderer.render_region(900, 700, 600, 500)
    parts = np.concatenate([renderer.render_region(900, 700, 600, 173), renderer.render_region(900, 873, 600, 327)])
    assert np.array_equal(whole, parts)
    again = PhantomRenderer(make_layout((1.0, 0.8), 0.486, parse_lesions("micro:1@0.3"), seed=2), normal, tumour, capsule,
                           2)
    assert np.array_equal(whole, again.render_region(900, 700, 600, 500))
    other = PhantomRenderer(make_layout((1.0, 0.8), 0.486, parse_lesions("micro:1@0.3"), seed=3), normal, tumour, capsule,
                           3)
    assert not np.array_equal(whole, other.render_region(900, 700, 600, 500))


def test_feathered_texture_has_no_seams():
    """Weights of overlapping tiles sum to exactly 1: constant tiles give a constant plane, seams included."""
    flat = TileLibrary((np.full((64, 64, 3), 100.0, np.float32), np.full((64, 64, 3), 100.0, np.float32)),
                       ("a", "b"), 64, 1.0)
    plane = synthesize(flat, 0, 0, 300, 260, seed=0, stream=0)
    assert np.allclose(plane, 100.0, atol=1e-3)


def test_lesion_spec_and_expected_class():
    assert parse_lesions("none") == []
    assert parse_lesions("itc:1,micro:2@1.5") == [LesionSpec("itc"), LesionSpec("micro", 1.5), LesionSpec("micro", 1.5)]
    for bad in ("micro", "huge:1", "micro:1@2.5", "itc:1@0.2", "macro:1@2.0"):
        with pytest.raises(MicrometsError):
            parse_lesions(bad)
    layout = make_layout((6.0, 4.5), 0.972, parse_lesions("itc:2,micro:1@1.9,macro:1@2.1"), seed=0)
    assert expected_node_class(layout) == "macro"
    outlines = [les.outline_l0 for les in layout.lesions]
    gaps_um = [a.distance(b) * 0.972 for i, a in enumerate(outlines) for b in outlines[i + 1:]]
    assert min(gaps_um) >= 200.0 - 1e-6  # never grouped by the 75 µm rule
    assert expected_node_class(make_layout((1.0, 1.0), 0.972, [], seed=0)) == "negative"
    with pytest.raises(MicrometsError, match="cannot fit"):
        make_layout((1.0, 1.0), 0.972, parse_lesions("macro:1"), seed=0)


def test_cli_phantom_bad_input_is_one_line_and_exit_2(tmp_path):
    env = {"PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src"), "PATH": "/usr/bin:/bin"}
    proc = subprocess.run(
        [sys.executable, "-m", "micromets", "phantom", "--normal-tiles", str(TILES / "normal"), "--tumour-tiles",
         str(tmp_path / "missing"), "--tiles-mpp", "0.243", "--lesions", "micro:1", "--size-mm", "2,2",
         "--out", str(tmp_path / "o")], capture_output=True, text=True, env=env, timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "missing" in proc.stderr


def test_real_camelyon16_outlines_are_scaled_to_the_prescribed_diameter(shared_data):
    from micromets.phantom.layout import load_outlines

    outlines = load_outlines(shared_data / "camelyon16_polygons")
    assert len(outlines) > 50
    layout = make_layout((5.0, 4.0), 0.972, parse_lesions("micro:2@0.6,macro:1@2.4"), seed=4, shape="camelyon16",
                         outlines=outlines)
    measured = sorted(m.diameter_mm for m in measure_lesions([les.outline_l0 for les in layout.lesions], 0.972))
    assert measured == pytest.approx([0.6, 0.6, 2.4], rel=1e-9)
    assert all(les.shape == "camelyon16" and les.outline_l0.is_valid for les in layout.lesions)


def test_stroma_is_drawn_around_the_lesions_the_seed_placed():
    """Trabeculae and islands come after the lesions: the seed places the same lesions with or without stroma, a
    2.2 mm macrometastasis still fits a 3.6 x 3.2 mm node (the islands-first layout could not place it), and the
    stroma keeps LESION_MARGIN_UM away from every lesion."""
    from micromets.phantom.layout import LESION_MARGIN_UM

    specs = parse_lesions("macro:1@2.2,itc:1")
    plain = make_layout((3.6, 3.2), 0.243, specs, seed=401)
    layout = make_layout((3.6, 3.2), 0.243, specs, seed=401, stroma=True)
    assert [les.outline_l0.wkt for les in layout.lesions] == [les.outline_l0.wkt for les in plain.lesions]
    stroma_l0 = plain.cortex_l0.difference(layout.cortex_l0)
    assert stroma_l0.area * 0.243 ** 2 / 1e6 > 0.02  # mm²: trabeculae and islands, less what the macro displaced
    margin_px = LESION_MARGIN_UM / 0.243
    for les in layout.lesions:
        assert stroma_l0.distance(les.outline_l0) >= margin_px * 0.99
