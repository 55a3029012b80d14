"""Tumour-probability heatmap of a slide: the detector run over every tissue cell of the tile grid.

A heatmap cell is one model patch: ``cell_um = patch_px × input_mpp`` of the model card. Cell ``(h_r, h_c)``
covers level-0 ``[ox + h_c*l0_cell, ox + (h_c+1)*l0_cell)`` (likewise rows) with ``l0_cell = cell_um / l0_mpp``
and ``(ox, oy) = l0_origin``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import numpy as np

from micromets.tiles import TileGrid, iter_patch_blocks, tile_grid

if TYPE_CHECKING:
    from micromets.model import Detector
    from micromets.slide import Slide
    from micromets.tissue import TissueMask


@dataclass
class Heatmap:
    """A per-cell score over a slide, with the geometry that maps cells to level-0 pixels."""

    h_prob: np.ndarray        # float32 (rows, cols); 0 where not scored
    h_tissue: np.ndarray      # bool (rows, cols): cells that were scored
    cell_um: float            # side of one cell in µm
    l0_mpp: float             # µm per level-0 pixel of the slide
    l0_origin: tuple[float, float] = (0.0, 0.0)  # level-0 px of the top-left corner of cell (0, 0)

    @property
    def l0_cell(self) -> float:
        return self.cell_um / self.l0_mpp

    def h_centres_l0(self, h_rc: np.ndarray) -> np.ndarray:
        """Level-0 ``(x, y)`` of the centres of cells ``h_rc`` (N, 2 as row, col)."""
        h_rc = np.asarray(h_rc, np.float64).reshape(-1, 2)
        return np.column_stack([self.l0_origin[0] + (h_rc[:, 1] + 0.5) * self.l0_cell,
                                self.l0_origin[1] + (h_rc[:, 0] + 0.5) * self.l0_cell])


@dataclass
class HeatmapTiming:
    """Where the time went (seconds). ``read_s`` is summed over reader threads, which overlap inference."""

    read_s: float = 0.0
    read_wait_s: float = 0.0
    inference_s: float = 0.0
    n_patches: int = 0


def compute_heatmap(slide: Slide, tissue: TissueMask, detector: Detector, batch_size: int = 128,
                    block_cells: int = 8, readers: int = 2,
                    progress: Callable[[int, int], None] | None = None) -> tuple[Heatmap, HeatmapTiming]:
    """Score every tissue cell of ``slide`` with ``detector``; ``progress(done, total)`` is called per batch."""
    cell_um = detector.patch_px * detector.input_mpp
    grid: TileGrid = tile_grid(slide, tissue, cell_um)
    h_prob = np.zeros(grid.shape, np.float32)
    total = int(grid.h_tissue.sum())
    timing = HeatmapTiming()
    pending_rc: list[np.ndarray] = []
    pending_px: list[np.ndarray] = []

    def flush() -> None:
        if not pending_rc:
            return
        h_rc = np.concatenate(pending_rc)
        patches = np.concatenate(pending_px)
        pending_rc.clear()
        pending_px.clear()
        start = time.perf_counter()
        h_prob[h_rc[:, 0], h_rc[:, 1]] = detector.predict(patches)
        timing.inference_s += time.perf_counter() - start
        timing.n_patches += len(h_rc)
        if progress:
            progress(timing.n_patches, total)

    blocks = iter_patch_blocks(slide, grid, detector.patch_px, detector.input_mpp, block_cells, readers)
    while True:
        start = time.perf_counter()
        block = next(blocks, None)
        timing.read_wait_s += time.perf_counter() - start
        if block is None:
            break
        timing.read_s += block.read_s
        pending_rc.append(block.h_rc)
        pending_px.append(block.patches)
        if sum(len(p) for p in pending_rc) >= batch_size:
            flush()
    flush()
    return Heatmap(h_prob, grid.h_tissue, cell_um, slide.l0_mpp), timing
