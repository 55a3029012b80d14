"""Slide reading through OpenSlide: resolution, windowed reads, clear errors."""

import numpy as np
import pytest
import tifffile
from PIL import Image

from micromets.errors import MicrometsError
from micromets.phantom.pyramid import write_pyramid
from micromets.slide import _on_white, open_slide


def test_real_svs_opens_with_its_resolution_and_size(shared_data):
    with open_slide(shared_data / "slides" / "cmu_small_region.svs") as slide:
        assert slide.l0_mpp == pytest.approx(0.499)
        assert slide.mpp_source == "openslide.mpp"
        assert (slide.l0_width, slide.l0_height) == (2220, 2967)
        assert slide.slide_id == "cmu_small_region"


def test_read_at_mpp_resamples_to_the_target_resolution(shared_data):
    with open_slide(shared_data / "slides" / "cmu_small_region.svs") as slide:
        full = slide.read_region(1000, 1000, 0, 200, 100)
        half = slide.read_at_mpp(1000, 1000, 200, 100, 0.998)
    assert full.shape == (100, 200, 3) and full.dtype == np.uint8
    assert half.shape == (50, 100, 3)
    # a 2:1 box resize of the same window: mean colour is preserved
    assert np.abs(half.reshape(-1, 3).mean(0) - full.reshape(-1, 3).mean(0)).max() < 2


def test_thumbnail_is_streamed_and_covers_the_slide(shared_data):
    with open_slide(shared_data / "slides" / "cmu_small_region.svs") as slide:
        thumb, thumb_mpp = slide.thumbnail(8.0, l0_chunk_px=512)  # many windows
        whole, _ = slide.thumbnail(8.0)
    assert thumb_mpp == pytest.approx(16 * 0.499)
    assert thumb.shape == (int(np.ceil(2967 / 16)), int(np.ceil(2220 / 16)), 3)
    assert np.abs(thumb.astype(int) - whole.astype(int)).max() <= 1


def _pyramid(path, mpp=0.5, size=(1024, 768)):
    rng = np.random.default_rng(0)
    write_pyramid(path, size[0], size[1], mpp,
                  lambda x, y, w, h: rng.integers(100, 200, (h, w, 3), dtype=np.uint8))
    return path


def test_tiff_resolution_tags_give_the_mpp(tmp_path):
    with open_slide(_pyramid(tmp_path / "p.tiff", mpp=0.243)) as slide:
        assert slide.l0_mpp == pytest.approx(0.243, rel=1e-3)
        assert slide.level_count > 1


def test_mpp_override_wins(tmp_path):
    with open_slide(_pyramid(tmp_path / "p.tiff", mpp=0.243), mpp=0.5) as slide:
        assert slide.l0_mpp == 0.5 and slide.mpp_source == "override"


def test_reads_past_the_edge_are_white_and_alpha_is_composited_on_white(tmp_path):
    with open_slide(_pyramid(tmp_path / "p.tiff")) as slide:
        inside = slide.read_region(0, 0, 0, 64, 48)
        edge = slide.read_region(-32, -16, 0, 96, 64)
        edge_small = slide.read_at_mpp(-32, -16, 96, 64, 1.0)
    assert (edge[:16] == 255).all() and (edge[:, :32] == 255).all()
    np.testing.assert_array_equal(edge[16:, 32:], inside)
    assert edge.flags.writeable and edge_small.shape == (32, 48, 3) and (edge_small[:8, :16] == 255).all()
    # openslide-python gives straight (not premultiplied) alpha: rgb·α + 255·(1 − α), rounded
    rgba = Image.fromarray(np.array([[[200, 100, 0, 128], [10, 20, 30, 255], [0, 0, 0, 0]]], np.uint8), "RGBA")
    np.testing.assert_array_equal(np.asarray(_on_white(rgba)), [[[227, 177, 127], [10, 20, 30], [255, 255, 255]]])


def test_tiff_without_resolution_is_refused_unless_overridden(tmp_path):
    path = tmp_path / "nores.tiff"
    tifffile.imwrite(path, np.full((512, 512, 3), 200, np.uint8), tile=(256, 256), photometric="rgb")
    with pytest.raises(MicrometsError, match=r"nores.tiff: resolution unknown.*--mpp"):
        open_slide(path)
    with open_slide(path, mpp=0.25) as slide:
        assert slide.l0_mpp == 0.25


@pytest.mark.parametrize("content, message", [
    (None, "no such file"),
    (b"", "empty file"),
    (b"\x00garbage" * 100, "not a slide format"),
])
def test_bad_files_give_one_clear_line(tmp_path, content, message):
    path = tmp_path / "bad.svs"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(MicrometsError, match=message) as err:
        open_slide(path)
    assert "\n" not in str(err.value) and "bad.svs" in str(err.value)


def test_implausible_resolution_is_refused(tmp_path):
    with pytest.raises(MicrometsError, match="implausible resolution"):
        open_slide(_pyramid(tmp_path / "p.tiff"), mpp=500)


def test_huge_flat_tiff_without_pyramid_is_refused_quickly(tmp_path):
    from conftest import write_sparse_giant

    tile = np.random.default_rng(2).integers(0, 255, (256, 256, 3), dtype=np.uint8)
    path = write_sparse_giant(tmp_path / "flat.tiff", tile, n_tiles=256)  # 65,536² px, one level
    with pytest.raises(MicrometsError, match=r"flat.tiff: no low-resolution level \(smallest level 65536×65536"):
        open_slide(path)


@pytest.mark.parametrize("mpp, target", [(0.243, 0.5), (0.486, 0.5), (0.5, 0.5), (0.7, 0.5)])
def test_read_window_pixels_do_not_depend_on_the_window(tmp_path, mpp, target):
    """A 3 × 3 grid of 40 px windows at ``target`` µm/px equals one 120 px read of the same place, pixel for pixel
    (the box resampling is anchored at exact level-0 positions), whether the pyramid level is resampled down,
    slightly down, not at all or up."""
    with open_slide(_pyramid(tmp_path / "p.tiff", mpp=mpp)) as slide:
        k = target / slide.l0_mpp  # level-0 px per output px
        l0_x0, l0_y0 = 37.3, 21.9
        whole = slide.read_window(l0_x0, l0_y0, 120, 120, target)
        assert whole.shape == (120, 120, 3) and whole.dtype == np.uint8
        for i in range(3):
            for j in range(3):
                part = slide.read_window(l0_x0 + 40 * j * k, l0_y0 + 40 * i * k, 40, 40, target)
                np.testing.assert_array_equal(part, whole[40 * i:40 * (i + 1), 40 * j:40 * (j + 1)])
        if mpp == target:  # on the level's own pixels: the read itself
            exact = slide.read_window(64, 32, 50, 30, target)
            np.testing.assert_array_equal(exact, slide.read_region(64, 32, 0, 50, 30))


def _openslide_rgb(path, l0_x, l0_y, level, l_w, l_h):
    import openslide

    with openslide.OpenSlide(str(path)) as osr:
        return np.asarray(_on_white(osr.read_region((l0_x, l0_y), level, (l_w, l_h))))


@pytest.mark.parametrize("compression", ["jpeg", "zlib", None])
def test_tiled_tiff_levels_are_decoded_directly_with_openslides_pixels(tmp_path, shared_data, compression):
    """Every level of a pyramidal TIFF (and the real SVS's one level) is decoded by tifffile, and any window —
    inside, across or past the edges, at whole or fractional level positions — equals OpenSlide's read."""
    rng = np.random.default_rng(1)
    if compression is None or compression == "zlib":
        rgb = np.asarray(Image.open(sorted((shared_data / "camelyon17_tiles").glob("*.jpeg"))[0]).convert("RGB"))
        path = tmp_path / "p.tiff"
        with tifffile.TiffWriter(path) as tif:
            options = dict(tile=(128, 128), compression=compression, photometric="rgb",
                           resolution=(1e4 / 0.25, 1e4 / 0.25), resolutionunit="CENTIMETER")
            tif.write(rgb[:1000, :1300], **options)
            tif.write(rgb[:1000:2, :1300:2], subfiletype=1, **options)
        levels = (0, 1)
    else:
        path = shared_data / "slides" / "cmu_small_region.svs"
        levels = (0,)
    with open_slide(path) as slide:
        assert slide.direct_levels == levels
        for level in levels:
            down = slide.level_downsamples[level]
            l_w, l_h = slide.level_dimensions[level]
            for _ in range(12):
                w, h = (int(v) for v in rng.integers(1, 400, 2))
                l_x, l_y = int(rng.integers(-200, l_w + 50)), int(rng.integers(-200, l_h + 50))
                for l0_x, l0_y in ((round(l_x * down), round(l_y * down)), (round(l_x * down) + 1, round(l_y * down))):
                    np.testing.assert_array_equal(slide.read_region(l0_x, l0_y, level, w, h),
                                                  _openslide_rgb(path, l0_x, l0_y, level, w, h))


def test_demo_pyramid_reads_directly_at_every_level():
    from conftest import REPO

    path = REPO / "demo" / "slides" / "node1.tiff"
    with open_slide(path) as slide:
        assert slide.direct_levels == tuple(range(slide.level_count))
        window = slide.read_window(1000.0, 800.0, 200, 150, 0.5)  # resampled from 0.486 µm/px
        np.testing.assert_array_equal(slide.read_region(1000, 800, 1, 300, 200),
                                      _openslide_rgb(path, 1000, 800, 1, 300, 200))
    assert window.shape == (150, 200, 3)


def test_a_tile_read_by_several_threads_at_once_is_decoded_once():
    """The heatmap's reader threads work on neighbouring blocks that share tiles: a tile asked for while another
    thread decodes it waits for that decode instead of decoding it again (and every thread gets its pixels)."""
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    from conftest import REPO

    with open_slide(REPO / "demo" / "slides" / "node1.tiff") as slide:
        assert slide.direct_levels  # checks each level against OpenSlide once, decoding a middle tile
        direct = slide._direct
        decoded, real_decode = [], direct._decode

        def slow_decode(level, t_index):  # the real decode, slowed so that the threads overlap
            decoded.append((level, t_index))
            time.sleep(0.2)
            return real_decode(level, t_index)

        direct._decode = slow_decode
        start = threading.Barrier(6)

        def read(_):
            start.wait()
            return slide.read_region(0, 0, 0, 64, 64)

        with ThreadPoolExecutor(6) as pool:
            reads = list(pool.map(read, range(6)))
        direct._decode = real_decode
        assert decoded == [(0, 0)]
        for rgb in reads:
            np.testing.assert_array_equal(rgb, _openslide_rgb(REPO / "demo" / "slides" / "node1.tiff", 0, 0, 0, 64, 64))
