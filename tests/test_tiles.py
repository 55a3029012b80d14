"""Tile grid over tissue and the block reader: patches are the right pixels of the right cells."""

import threading

import numpy as np
import pytest

from micromets.phantom.pyramid import write_pyramid
from micromets.slide import open_slide
from micromets.tiles import blocks_with_tissue, iter_patch_blocks, read_ahead, tile_grid, tissue_fraction
from micromets.tissue import TissueMask


@pytest.fixture(scope="module")
def position_slide(tmp_path_factory):
    """A 1024 × 768 px slide at 0.5 µm/px whose pixel value encodes its position (R: x // 4, G: y // 4)."""
    def render(x, y, w, h):
        yy, xx = np.mgrid[y:y + h, x:x + w]
        return np.stack([(xx // 4) % 256, (yy // 4) % 256, np.full_like(xx, 128)], -1).astype(np.uint8)

    path = tmp_path_factory.mktemp("tiles") / "position.tiff"
    write_pyramid(path, 1024, 768, 0.5, render, jpeg_quality=95)
    return path


def _mask(mask, mask_mpp=8.0, l0_mpp=0.5):
    return TissueMask(mask, mask_mpp, l0_mpp, np.zeros(mask.shape + (3,), np.uint8))


def test_tissue_fraction_counts_mask_pixels_per_cell():
    mask = np.zeros((8, 8), bool)
    mask[:4, :2] = True  # cell (0, 0) of 32 µm = 4×4 mask px of 8 µm: half tissue
    frac = tissue_fraction(_mask(mask), 32.0, (2, 2))
    assert frac.tolist() == [[0.5, 0.0], [0.0, 0.0]]


def test_tissue_fraction_equals_a_cell_by_cell_count():
    rng = np.random.default_rng(3)
    mask = rng.random((37, 53)) < 0.3
    frac = tissue_fraction(_mask(mask), 20.0, (15, 22))  # 2.5 mask px per cell: centres decide, last cells clipped
    r_of = np.minimum(((np.arange(37) + 0.5) * 8.0 / 20.0).astype(int), 14)
    c_of = np.minimum(((np.arange(53) + 0.5) * 8.0 / 20.0).astype(int), 21)
    for h_r in range(15):
        for h_c in range(22):
            cell = mask[np.ix_(r_of == h_r, c_of == h_c)]
            assert frac[h_r, h_c] == (cell.mean() if cell.size else 0.0)


def test_blocks_cover_every_tissue_cell_once():
    from micromets.tiles import TileGrid

    h_tissue = np.zeros((20, 21), bool)
    h_tissue[[0, 9, 19], [0, 20, 5]] = True
    grid = TileGrid(64.0, 0.25, h_tissue)
    assert sorted(blocks_with_tissue(grid, 8)) == [(0, 0), (8, 16), (16, 0)]


@pytest.mark.parametrize("readers", [0, 2])  # 0: read in the calling thread (a one-thread batch worker)
def test_patches_match_direct_reads(position_slide, readers):
    with open_slide(position_slide) as slide:
        mask = np.ones((768 // 16, 1024 // 16), bool)
        grid = tile_grid(slide, TissueMask(mask, 8.0, 0.5, np.zeros(mask.shape + (3,), np.uint8)), cell_um=32.0)
        assert grid.shape == (12, 16) and grid.h_tissue.all()
        blocks = list(iter_patch_blocks(slide, grid, patch_px=64, patch_mpp=0.5, block_cells=5, readers=readers))
        n = sum(len(b.h_rc) for b in blocks)
        assert n == 12 * 16
        for block in blocks:
            for (r, c), patch in zip(block.h_rc[:3], block.patches[:3]):
                direct = slide.read_region(c * 64, r * 64, 0, 64, 64)
                assert np.abs(patch.astype(int) - direct.astype(int)).max() <= 2


def test_sparse_cells_read_only_their_box_and_match_direct_reads(position_slide):
    from micromets.tiles import TileGrid, read_block

    h_tissue = np.zeros((12, 16), bool)
    h_tissue[[2, 4], [3, 6]] = True  # two cells of one 8 × 8 block, far from its corner
    with open_slide(position_slide) as slide:
        grid = TileGrid(32.0, 0.5, h_tissue)
        block = read_block(slide, grid, 0, 0, 8, patch_px=64, patch_mpp=0.5)
        assert block.h_rc.tolist() == [[2, 3], [4, 6]]
        for (r, c), patch in zip(block.h_rc, block.patches):
            direct = slide.read_region(c * 64, r * 64, 0, 64, 64)
            assert np.abs(patch.astype(int) - direct.astype(int)).max() <= 2
        assert len(read_block(slide, grid, 8, 8, 8, patch_px=64, patch_mpp=0.5).h_rc) == 0


@pytest.mark.parametrize("readers", [0, 1, 2])
def test_read_ahead_keeps_order_bounds_the_reads_in_flight_and_raises_where_the_value_was(readers):
    started, threads = [], set()

    def read(i):
        started.append(i)
        threads.add(threading.current_thread())
        if i == 0:  # the first read waits, so that the other readers may run ahead
            threading.Event().wait(0.2)
        if i == 7:
            raise ValueError("seven")
        return i * 10

    values = read_ahead(read, ((i,) for i in range(9)), readers, depth=3)
    got = [next(values) for _ in range(7)]
    assert got == [i * 10 for i in range(7)]
    assert len(started) <= 7 + (3 if readers else 0)
    assert (threads == {threading.current_thread()}) == (readers == 0)
    if readers == 0:
        assert started == list(range(7))
    with pytest.raises(ValueError, match="seven"):
        next(values)
