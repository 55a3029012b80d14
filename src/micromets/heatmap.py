"""Tumour-probability heatmap of a slide: the detector run over the tissue cells of the tile grid.

A heatmap cell is one model patch: ``cell_um = patch_px × input_mpp`` of the model card. Cell ``(h_r, h_c)``
covers level-0 ``[ox + h_c*l0_cell, ox + (h_c+1)*l0_cell)`` (likewise rows) with ``l0_cell = cell_um / l0_mpp``
and ``(ox, oy) = l0_origin``.

Two modes (``analyze --mode``):

- ``thorough`` (default, :func:`compute_heatmap`): the fine model over every tissue cell;
- ``fast`` (:func:`compute_heatmap_fast`): a coarse screening model (2 µm/px, ``models/coarse``) over every
  tissue cell, then the fine model only on the cells near the screen's candidates (:func:`candidate_cells`).
  Isolated tumour cells (< 0.2 mm) can vanish at the screen's resolution: fast mode can miss ITC.
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
    """Where the time went (seconds). ``read_s`` is summed over reader threads, which overlap inference.

    For ``--mode fast`` the coarse screen's own pass is in ``screen_s`` (wall, reading and inference) and its
    patch count in ``n_screen_patches``; ``n_patches`` counts the fine model's patches only.
    """

    read_s: float = 0.0
    read_wait_s: float = 0.0
    inference_s: float = 0.0
    n_patches: int = 0
    screen_s: float = 0.0
    n_screen_patches: int = 0


def compute_heatmap(slide: Slide, tissue: TissueMask, detector: Detector, batch_size: int | None = None,
                    block_cells: int = 16, readers: int = 2, progress: Callable[[int, int], None] | None = None,
                    h_score: np.ndarray | None = None) -> tuple[Heatmap, HeatmapTiming]:
    """Score the tissue cells of ``slide`` with ``detector``; ``progress(done, total)`` is called per batch.

    ``h_score`` (bool, the grid's shape; default: every tissue cell) limits scoring to those cells; the others
    keep probability 0 but stay tissue in ``h_tissue``. Patches go to the detector ``batch_size`` at a time
    (default: the card's batch size × the detector's threads, so each thread gets a full batch). Cells are read
    ``block_cells × block_cells`` at a time, one OpenSlide read each (OpenSlide costs less per pixel on larger
    reads: measured 0.23 ms of CPU per 96 px patch for 16 × 16 blocks, 0.26 for 8 × 8, 0.40 for 256 px reads).
    """
    cell_um = detector.patch_px * detector.input_mpp
    h_tissue = tile_grid(slide, tissue, cell_um).h_tissue
    grid = TileGrid(cell_um, slide.l0_mpp, h_tissue if h_score is None else h_tissue & h_score)
    batch_size = batch_size or detector.batch_size * detector.threads
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
    return Heatmap(h_prob, h_tissue, cell_um, slide.l0_mpp), timing


def candidate_cells(screen: Heatmap, fine_shape: tuple[int, int], fine_cell_um: float, threshold: float,
                    margin_um: float) -> np.ndarray:
    """Cells of a fine grid (``fine_shape``, ``fine_cell_um``; same origin) to confirm after a coarse screen.

    A fine cell is a candidate when the coarse cell holding its centre scores ``>= threshold``, or when its centre
    lies within ``margin_um`` (centre to centre, µm) of such a fine cell — the margin lets the fine model see the
    whole of a deposit whose edge scored low at coarse scale. Returns bool of ``fine_shape``.
    """
    hot = screen.h_prob >= threshold
    rows, cols = fine_shape
    c_r = np.minimum(((np.arange(rows) + 0.5) * fine_cell_um / screen.cell_um).astype(np.int64), hot.shape[0] - 1)
    c_c = np.minimum(((np.arange(cols) + 0.5) * fine_cell_um / screen.cell_um).astype(np.int64), hot.shape[1] - 1)
    fine = hot[np.ix_(c_r, c_c)]
    radius = margin_um / fine_cell_um
    if radius >= 1 and fine.any():
        from scipy import ndimage

        r = int(radius)
        yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
        fine = ndimage.binary_dilation(fine, structure=yy ** 2 + xx ** 2 <= radius ** 2)
    return fine


def screen_settings(screen: Detector) -> tuple[float, float]:
    """(threshold, margin_um) of a coarse screen: its card's ``screen_threshold`` (chosen low, for sensitivity)
    and a margin of one coarse cell (``patch_px × input_mpp`` µm)."""
    return float(screen.card.get("screen_threshold", 0.5)), screen.cell_um


def compute_heatmap_fast(slide: Slide, tissue: TissueMask, detector: Detector, screen: Detector,
                         threshold: float, margin_um: float, readers: int = 2,
                         progress: Callable[[int, int], None] | None = None) -> tuple[Heatmap, HeatmapTiming]:
    """``--mode fast``: the coarse ``screen`` model over all tissue, then ``detector`` only near its candidates.

    ``threshold`` should be low (high sensitivity) and ``margin_um`` widens every candidate region
    (:func:`candidate_cells`; defaults of the shipped screen: :func:`screen_settings`). The result is the fine heatmap:
    cells not confirmed have probability 0 but are still tissue. Isolated tumour cells (< 0.2 mm) can vanish at
    the screen's resolution, so fast mode can miss ITC; ``compute_heatmap`` (``--mode thorough``) cannot.
    """
    start = time.perf_counter()
    coarse, coarse_timing = compute_heatmap(slide, tissue, screen, readers=readers)
    cell_um = detector.patch_px * detector.input_mpp
    shape = tile_grid(slide, tissue, cell_um).shape
    h_score = candidate_cells(coarse, shape, cell_um, threshold, margin_um)
    screen_s = time.perf_counter() - start
    heatmap, timing = compute_heatmap(slide, tissue, detector, readers=readers, progress=progress, h_score=h_score)
    timing.read_s += coarse_timing.read_s
    timing.screen_s = screen_s
    timing.n_screen_patches = coarse_timing.n_patches
    return heatmap, timing
