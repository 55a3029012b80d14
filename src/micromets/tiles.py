"""The tile grid over tissue and a prefetching reader of its patches.

The grid covers the whole slide with square cells of ``cell_um`` µm, starting at level-0 ``(0, 0)``. Cell
``(h_r, h_c)`` covers level-0 ``[h_c*l0_cell, (h_c+1)*l0_cell) × [h_r*l0_cell, (h_r+1)*l0_cell)`` with
``l0_cell = cell_um / l0_mpp``. A cell is scored when at least ``min_tissue_fraction`` of it is tissue.

Patches are read by blocks of ``block_cells × block_cells`` cells (one OpenSlide read per block, each tissue
region read once per scale) in reader threads that run ahead of the model, so reading overlaps inference.
"""

from __future__ import annotations

import math
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, TypeVar

import numpy as np

from micromets.errors import MicrometsError
from micromets.slide import Slide
from micromets.tissue import TissueMask

T = TypeVar("T")


@dataclass
class TileGrid:
    """Cells of ``cell_um`` µm over a slide, with the cells that hold tissue."""

    cell_um: float
    l0_mpp: float
    h_tissue: np.ndarray  # bool (rows, cols)

    @property
    def l0_cell(self) -> float:
        """Side of one cell in level-0 pixels."""
        return self.cell_um / self.l0_mpp

    @property
    def shape(self) -> tuple[int, int]:
        return self.h_tissue.shape


def tissue_fraction(tissue: TissueMask, cell_um: float, h_shape: tuple[int, int]) -> np.ndarray:
    """Fraction of each grid cell covered by tissue, from the mask pixels whose centres fall in the cell."""
    m_rows, m_cols = tissue.mask.shape
    # grid cell index of each mask row / column centre
    h_r_of = np.minimum(((np.arange(m_rows) + 0.5) * tissue.mask_mpp / cell_um).astype(np.int64), h_shape[0] - 1)
    h_c_of = np.minimum(((np.arange(m_cols) + 0.5) * tissue.mask_mpp / cell_um).astype(np.int64), h_shape[1] - 1)
    n_rows = np.bincount(h_r_of, minlength=h_shape[0])
    n_cols = np.bincount(h_c_of, minlength=h_shape[1])
    total = np.outer(n_rows, n_cols).astype(np.float64)
    rr, cc = np.nonzero(tissue.mask)
    inside = np.bincount(h_r_of[rr] * h_shape[1] + h_c_of[cc], minlength=h_shape[0] * h_shape[1])
    inside = inside.reshape(h_shape).astype(np.float64)
    return np.divide(inside, total, out=np.zeros(h_shape), where=total > 0)


def tile_grid(slide: Slide, tissue: TissueMask, cell_um: float, min_tissue_fraction: float = 0.1) -> TileGrid:
    """The grid of ``cell_um`` cells over ``slide``; cells with enough tissue are marked for scoring."""
    h_shape = (math.ceil(slide.l0_height * slide.l0_mpp / cell_um), math.ceil(slide.l0_width * slide.l0_mpp / cell_um))
    fraction = tissue_fraction(tissue, cell_um, h_shape)
    return TileGrid(cell_um, slide.l0_mpp, fraction >= min_tissue_fraction)


@dataclass
class PatchBlock:
    """Patches of the tissue cells of one block: ``h_rc[i]`` is the grid cell of ``patches[i]``."""

    h_rc: np.ndarray     # (N, 2) int
    patches: np.ndarray  # (N, patch_px, patch_px, 3) uint8
    read_s: float        # seconds spent reading and resampling this block


def blocks_with_tissue(grid: TileGrid, block_cells: int) -> list[tuple[int, int]]:
    """Top-left cells ``(h_r0, h_c0)`` of the blocks that contain at least one tissue cell."""
    rows, cols = grid.shape
    b_rows, b_cols = math.ceil(rows / block_cells), math.ceil(cols / block_cells)
    padded = np.zeros((b_rows * block_cells, b_cols * block_cells), bool)
    padded[:rows, :cols] = grid.h_tissue
    has = padded.reshape(b_rows, block_cells, b_cols, block_cells).any(axis=(1, 3))
    return [(int(r) * block_cells, int(c) * block_cells) for r, c in zip(*np.nonzero(has))]


def read_block(slide: Slide, grid: TileGrid, h_r0: int, h_c0: int, block_cells: int,
               patch_px: int, patch_mpp: float) -> PatchBlock:
    """Read one block in a single windowed read and cut it into the patches of its tissue cells.

    Only the bounding box of the block's tissue cells is read (a block at the tissue's edge, or holding a few
    candidate cells of ``--mode fast``, is not read whole). ``patch_px`` pixels at ``patch_mpp`` must span one cell
    (``grid.cell_um``). Pixels are resampled at their exact positions (:meth:`Slide.read_window`), so a cell's
    patch is the same whatever block it is read in.
    """
    start = time.perf_counter()
    rows, cols = grid.shape
    n_r, n_c = min(block_cells, rows - h_r0), min(block_cells, cols - h_c0)
    local = np.argwhere(grid.h_tissue[h_r0:h_r0 + n_r, h_c0:h_c0 + n_c])
    if len(local) == 0:
        return PatchBlock(np.zeros((0, 2), np.int64), np.zeros((0, patch_px, patch_px, 3), np.uint8), 0.0)
    (r_lo, c_lo), (r_hi, c_hi) = local.min(axis=0), local.max(axis=0)
    h_r0, h_c0, local = h_r0 + int(r_lo), h_c0 + int(c_lo), local - [r_lo, c_lo]
    n_r, n_c = int(r_hi - r_lo) + 1, int(c_hi - c_lo) + 1
    img = slide.read_window(h_c0 * grid.l0_cell, h_r0 * grid.l0_cell, n_c * patch_px, n_r * patch_px, patch_mpp)
    cells = img.reshape(n_r, patch_px, n_c, patch_px, 3).swapaxes(1, 2)
    patches = np.ascontiguousarray(cells[local[:, 0], local[:, 1]])
    h_rc = local + np.array([h_r0, h_c0])
    return PatchBlock(h_rc, patches, time.perf_counter() - start)


def read_ahead(read: Callable[..., T], calls: Iterable[tuple], readers: int, depth: int) -> Iterator[T]:
    """Yield ``read(*args)`` for each ``args`` of ``calls``, in order, with ``readers`` threads keeping up to
    ``depth`` calls in flight ahead of the caller (at least one); ``readers = 0`` calls ``read`` in the calling
    thread when the next value is asked for (no overlap, one thread in all). An error of a read is raised where
    its value would have been yielded."""
    if readers == 0:
        yield from (read(*args) for args in calls)
        return
    calls = iter(calls)
    with ThreadPoolExecutor(max_workers=readers, thread_name_prefix="micromets-read") as pool:
        pending: deque = deque()
        while True:
            while len(pending) < max(1, depth) and (args := next(calls, None)) is not None:
                pending.append(pool.submit(read, *args))
            if not pending:
                return
            yield pending.popleft().result()


def iter_patch_blocks(slide: Slide, grid: TileGrid, patch_px: int, patch_mpp: float,
                      block_cells: int = 8, readers: int = 2, prefetch_cells: int = 1024) -> Iterator[PatchBlock]:
    """Yield the tissue patches block by block, read ahead by ``readers`` threads, in a fixed order; ``readers = 0``
    reads each block in the calling thread when it is asked for (no overlap with inference, but one thread in all:
    a batch worker that owns one core).

    The blocks read ahead hold at most ``prefetch_cells`` cells (at least 4 blocks), so the readers keep working
    while the caller runs a batch through the network, whatever the block size (``--mode fast`` reads 2 × 2-cell
    blocks: 4 blocks ahead left the readers idle during inference, and inference idle during reading).
    """
    def read(h_r0: int, h_c0: int) -> PatchBlock:
        return read_block(slide, grid, h_r0, h_c0, block_cells, patch_px, patch_mpp)

    yield from read_ahead(read, blocks_with_tissue(grid, block_cells), readers,
                          max(4, prefetch_cells // block_cells ** 2))


def resample(image: np.ndarray, src_mpp: float, dst_mpp: float) -> np.ndarray:
    """Resample a uint8 image (RGB or one channel) from ``src_mpp`` to ``dst_mpp`` µm/px (Lanczos, antialiased when
    shrinking); unchanged when the two differ by less than 0.1 %."""
    from PIL import Image

    if src_mpp <= 0 or dst_mpp <= 0:
        raise MicrometsError(f"resolution must be > 0 µm/px, got {src_mpp} → {dst_mpp}")
    scale = src_mpp / dst_mpp
    if abs(scale - 1.0) < 1e-3:
        return image
    h, w = image.shape[:2]
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.LANCZOS))
