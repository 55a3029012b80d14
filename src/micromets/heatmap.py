"""Tumour-probability heatmap of a slide: the detector run over the tissue cells of the tile grid.

A heatmap cell is one model patch: ``cell_um = patch_px × input_mpp`` of the model card. Cell ``(h_r, h_c)``
covers level-0 ``[ox + h_c*l0_cell, ox + (h_c+1)*l0_cell)`` (likewise rows) with ``l0_cell = cell_um / l0_mpp``
and ``(ox, oy) = l0_origin``.

Two modes (``analyze --mode``):

- ``thorough`` (default, :func:`compute_heatmap`): the fine model over every tissue cell;
- ``fast`` (:func:`compute_heatmap_fast`): a coarse screening model (2 µm/px, ``models/coarse``) over every
  tissue cell, then the fine model on the screen's candidates (:func:`candidate_cells`), grown over the whole of
  every positive region. A deposit the screen misses is lost: fast mode can miss ITC.

In both, given ``rescore_from`` (the lesion threshold), where the detector has a context model
(:attr:`micromets.model.Detector.context`) :func:`context_check` first lowers every positive region in which the
context model calls the larger field around every cell normal (a region stays tumour only if the field around one
of its cells is called tumour too); then :func:`rescore_edge_cells` checks every cell still at or above it that
is not surrounded by such cells against the mean of its 9 half-cell-shifted windows, and drops it to that mean
where the mean is below: one window cut just so over dense stroma scores high where the overlapping windows do
not.

:func:`confirmation_scores` re-scores chosen cells densely (the 3 × 3 windows shifted by half a cell), the
evidence a lesion must show to be kept (``micromets.analyze``). :func:`local_heatmap` scores a small region again
with windows at a fine stride, whose iso-line outlines a small deposit (``micromets.analyze``).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import numpy as np

from micromets.tiles import TileGrid, iter_patch_blocks, read_ahead, tile_grid

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
    patch count in ``n_screen_patches``; ``n_patches`` counts the fine model's patches only, and ``n_inked`` those
    of them left unscored because ink or black pigment covers them (:meth:`Detector.predict`). ``context_s`` and
    ``n_context``: :func:`context_check` (wall, cells checked); ``rescore_s`` and ``n_rescored``:
    :func:`rescore_edge_cells`.
    """

    read_s: float = 0.0
    read_wait_s: float = 0.0
    inference_s: float = 0.0
    n_patches: int = 0
    n_inked: int = 0
    screen_s: float = 0.0
    n_screen_patches: int = 0
    rescore_s: float = 0.0
    n_rescored: int = 0
    context_s: float = 0.0
    n_context: int = 0


def compute_heatmap(slide: Slide, tissue: TissueMask, detector: Detector, batch_size: int | None = None,
                    block_cells: int = 16, readers: int = 2, progress: Callable[[int, int], None] | None = None,
                    rescore_from: float | None = None) -> tuple[Heatmap, HeatmapTiming]:
    """Score every tissue cell of ``slide`` with ``detector`` (``--mode thorough``); ``progress(done, total)`` is
    called per batch. Given ``rescore_from``, the cells at or above it on an edge, or alone, are checked against
    their overlapping windows (:func:`rescore_edge_cells`).

    Patches go to the detector ``batch_size`` at a time (default: the card's batch size × the detector's threads,
    so each thread gets a full batch). Cells are read ``block_cells × block_cells`` at a time, one OpenSlide read
    each (OpenSlide costs less per pixel on larger reads: measured 0.23 ms of CPU per 96 px patch for 16 × 16
    blocks, 0.26 for 8 × 8, 0.40 for 256 px reads).
    """
    cell_um = detector.patch_px * detector.input_mpp
    grid = tile_grid(slide, tissue, cell_um)
    h_prob = np.zeros(grid.shape, np.float32)
    timing = HeatmapTiming()
    _score_cells(slide, grid, detector, h_prob, timing, batch_size, block_cells, readers, progress,
                 int(grid.h_tissue.sum()))
    heatmap = Heatmap(h_prob, grid.h_tissue, cell_um, slide.l0_mpp)
    if rescore_from is not None:
        context_check(slide, detector, heatmap, rescore_from, timing, readers)
        rescore_edge_cells(slide, detector, heatmap, rescore_from, timing, readers)
    return heatmap, timing


def rescore_edge_cells(slide: Slide, detector: Detector, heatmap: Heatmap, threshold: float,
                       timing: HeatmapTiming | None = None, readers: int = 2) -> None:
    """Check, in place, the cells of ``heatmap`` at or above ``threshold`` that have a cell below it among their 8
    neighbours (the edge of a positive region, or a lone cell) against the windows overlapping them: the mean of
    a cell's 9 half-cell-shifted windows (:func:`confirmation_scores`, the sliding-window average of CAMELYON16
    heatmaps, stride ½ patch) must reach ``threshold`` too, or the cell takes that mean and drops below it. A cell
    that passes keeps its own value, so the outline of a deposit is the heatmap's where the windows agree; a cell
    inside a positive region is not checked: the windows of its neighbours, each half over it, already called it.

    One 48 µm window cut just so over dense stroma scores high where the windows overlapping it do not. On a
    slide of normal breast stroma from a source the model never saw (BACH A03, fold-1 model, docs/model.md), 4.4 %
    of tissue cells reached 0.5 with one window each and 0.4 % after this; no hot cell there was inside a positive
    region. Adds ``rescore_s`` and ``n_rescored`` (cells checked) to ``timing``; ``readers``: reading threads
    (:func:`confirmation_scores`).
    """
    from scipy import ndimage

    start = time.perf_counter()
    hot = heatmap.h_prob >= threshold
    h_rc = np.argwhere(hot & ~ndimage.binary_erosion(hot, np.ones((3, 3), bool), border_value=0))
    if len(h_rc):
        rows, cols = h_rc.T
        mean = confirmation_scores(slide, detector, heatmap, h_rc, readers=readers).h_prob[rows, cols]
        heatmap.h_prob[rows, cols] = np.where(mean >= threshold, heatmap.h_prob[rows, cols], mean)
    if timing is not None:
        timing.rescore_s += time.perf_counter() - start
        timing.n_rescored += len(h_rc)


def context_check(slide: Slide, detector: Detector, heatmap: Heatmap, threshold: float,
                  timing: HeatmapTiming | None = None, readers: int = 2) -> None:
    """Check, in place, the positive regions of ``heatmap`` (8-connected cells at or above ``threshold``) against
    the detector's context model (:attr:`micromets.model.Detector.context`), which scores the larger field centred
    on each of their cells: a region where the context model calls at least one cell's field tumour (at or above
    ``threshold``) keeps every value, so a deposit keeps the detector's own outline; in any other region, whose
    every larger field the context model calls normal, every cell is lowered to ``min(own, context)``, below the
    threshold. Nothing happens without a context model.

    A region rather than a cell, because the larger field misses part of a real deposit's cells (on BACH
    carcinoma tiles no fold's model saw, a per-cell minimum turned a macrometastasis into a micrometastasis),
    while a false region, such as stroma or a lone cell, is called by no field around it (docs/model.md, "The
    context check"). Adds ``context_s`` and ``n_context`` (cells checked) to ``timing``; ``readers``:
    reading threads (:func:`context_scores`).
    """
    if detector.context is None:
        return
    from scipy import ndimage

    start = time.perf_counter()
    hot = heatmap.h_prob >= threshold
    h_rc = np.argwhere(hot)
    if len(h_rc):
        around = np.zeros(hot.shape, np.float32)
        around[tuple(h_rc.T)] = context_scores(slide, detector.context, heatmap, h_rc, readers=readers)
        regions, n = ndimage.label(hot, np.ones((3, 3), bool))
        called = np.r_[True, np.asarray(ndimage.maximum(around, regions, np.arange(1, n + 1))) >= threshold]
        lower = hot & ~called[regions]
        heatmap.h_prob[lower] = np.minimum(heatmap.h_prob[lower], around[lower])
    if timing is not None:
        timing.context_s += time.perf_counter() - start
        timing.n_context += len(h_rc)


def context_scores(slide: Slide, context: Detector, heatmap: Heatmap, h_rc: np.ndarray, block_cells: int = 4,
                   flush_windows: int = 512, readers: int = 2) -> np.ndarray:
    """The tumour probability (N,) that the ``context`` model gives the field of ``context.cell_um`` centred on
    each cell ``h_rc`` (N, 2 as row, col) of ``heatmap``, read at the context model's µm/px.

    Cells are read ``block_cells × block_cells`` at a time (one read of the block's cells' box widened by the
    context field, at exact level-0 positions: :meth:`Slide.read_window`) by ``readers`` threads ahead of the
    network (0: in the calling thread). A heatmap cell must be a whole number of the context model's pixels
    (48 µm cells at 1 µm/px are 48 px) for neighbouring fields to be cut from one read; otherwise each cell is read
    alone, so every field is centred exactly.
    """
    p = context.patch_px
    step = heatmap.cell_um / context.input_mpp  # context px from one cell's centre to the next
    step_px = round(step)
    if abs(step - step_px) > 1e-6:
        block_cells = 1
    l0_cell, l0_half_field = heatmap.l0_cell, context.cell_um / 2 / heatmap.l0_mpp
    h_rc = np.asarray(h_rc, np.int64).reshape(-1, 2)
    order, bounds = _by_block(h_rc, block_cells)
    out = np.zeros(len(h_rc), np.float32)
    windows: list[np.ndarray] = []
    index: list[np.ndarray] = []

    def flush() -> None:
        if windows:
            out[np.concatenate(index)] = context.predict(np.stack(windows))
            windows.clear()
            index.clear()

    def read(a: int, b: int) -> tuple[np.ndarray, np.ndarray]:
        which = order[a:b]
        (r0, c0), (r1, c1) = h_rc[which].min(axis=0), h_rc[which].max(axis=0)
        img = slide.read_window(heatmap.l0_origin[0] + (c0 + 0.5) * l0_cell - l0_half_field,
                                heatmap.l0_origin[1] + (r0 + 0.5) * l0_cell - l0_half_field,
                                int(c1 - c0) * step_px + p, int(r1 - r0) * step_px + p, context.input_mpp)
        local = (h_rc[which] - (r0, c0)) * step_px
        return which, np.stack([img[y:y + p, x:x + p] for y, x in local])

    for which, fields in read_ahead(read, bounds, readers, 2 * readers):
        windows.extend(fields)
        index.append(which)
        if len(windows) >= flush_windows:
            flush()
    flush()
    return out


def _score_cells(slide: Slide, grid: TileGrid, detector: Detector, h_prob: np.ndarray, timing: HeatmapTiming,
                 batch_size: int | None, block_cells: int, readers: int,
                 progress: Callable[[int, int], None] | None, total: int) -> None:
    """Write the detector's probability of every ``grid.h_tissue`` cell into ``h_prob``; add to ``timing``."""
    batch_size = batch_size or detector.batch_size * detector.threads
    pending_rc: list[np.ndarray] = []
    pending_px: list[np.ndarray] = []
    n_pending = 0

    def flush() -> None:
        nonlocal n_pending
        if not pending_rc:
            return
        h_rc = np.concatenate(pending_rc)
        patches = np.concatenate(pending_px)
        pending_rc.clear()
        pending_px.clear()
        n_pending = 0
        start = time.perf_counter()
        inked = np.zeros(len(patches), bool)
        h_prob[h_rc[:, 0], h_rc[:, 1]] = detector.predict(patches, inked)
        timing.inference_s += time.perf_counter() - start
        timing.n_patches += len(h_rc)
        timing.n_inked += int(inked.sum())
        if progress:
            progress(timing.n_patches, max(total, timing.n_patches))

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
        n_pending += len(block.h_rc)
        if n_pending >= batch_size:
            flush()
    flush()


def confirmation_scores(slide: Slide, detector: Detector, heatmap: Heatmap, h_rc: np.ndarray,
                        offsets_cells: tuple[float, ...] = (-0.5, 0.0, 0.5), block_cells: int = 4,
                        flush_windows: int = 1024, readers: int = 2) -> Heatmap:
    """Dense re-scoring of the cells ``h_rc`` (N, 2 as row, col) of ``heatmap``: for each, the mean tumour
    probability of the ``len(offsets_cells)²`` model windows whose origins are shifted from the cell's own by the
    offsets (in cells) along x and y; by default the 9 windows at −½, 0 and +½ cell, all of which contain the
    cell's centre. Returned as a Heatmap on the same grid, scored (``h_tissue``) only at ``h_rc``.

    This is the sliding-window averaging of overlapping patches that CAMELYON16 heatmaps used (stride ½ patch),
    done only where it decides something: a deposit shows in the windows around it, while a patch that scores
    high from one particular field (a seam of the phantom texture, a stroma or vessel pattern cut just so) tends
    not to (measured: docs/model.md, "Lesion confirmation"). The cells are read ``block_cells × block_cells`` at a
    time by ``readers`` threads ahead of the network (0: in the calling thread), one read of the box of a block's
    cells widened by the shifts, anchored at exact level-0 positions (:meth:`Slide.read_window`), so the unshifted
    window is the cell's own heatmap patch and a window shared by neighbouring cells of a block is scored once.
    Blocks of 4 read least: the 386 edge cells of the bench's large phantom took 5.5, 4.1, 3.4 and 3.9 s in blocks
    of 1, 2, 4 and 8 cells (one reader, a busy machine); in blocks of 4 on an idle one, 3.0 s with one reader and
    2.1 s with two.
    """
    p = detector.patch_px
    lo, span = min(offsets_cells), max(offsets_cells) - min(offsets_cells)
    shifts_px = np.array([round((o - lo) * p) for o in offsets_cells])
    side_px = p + round(span * p)
    l0_cell = heatmap.l0_cell
    h_rc = np.asarray(h_rc, np.int64).reshape(-1, 2)
    scores = np.zeros(heatmap.h_prob.shape, np.float32)
    done = np.zeros(heatmap.h_prob.shape, bool)
    order, bounds = _by_block(h_rc, block_cells)
    h_rc = h_rc[order]
    windows: list[np.ndarray] = []
    pending: list[tuple[np.ndarray, np.ndarray]] = []  # (cells, their windows' indices into `windows`)

    def flush() -> None:
        if not windows:
            return
        prob = detector.predict(np.stack(windows))
        for cells, index in pending:
            scores[cells[:, 0], cells[:, 1]] = prob[index].mean(axis=1)
            done[cells[:, 0], cells[:, 1]] = True
        windows.clear()
        pending.clear()

    def read(a: int, b: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        cells = h_rc[a:b]
        (r0, c0), (r1, c1) = cells.min(axis=0), cells.max(axis=0)
        img = slide.read_window(heatmap.l0_origin[0] + (c0 + lo) * l0_cell, heatmap.l0_origin[1] + (r0 + lo) * l0_cell,
                                int(c1 - c0) * p + side_px, int(r1 - r0) * p + side_px, detector.input_mpp)
        return cells, cells - (r0, c0), img

    for cells, local, img in read_ahead(read, bounds, readers, 2 * readers):
        ys = local[:, 0, None, None] * p + shifts_px[None, :, None]
        xs = local[:, 1, None, None] * p + shifts_px[None, None, :]
        corners = np.stack(np.broadcast_arrays(ys, xs), axis=-1).reshape(-1, 2)
        unique, inverse = np.unique(corners, axis=0, return_inverse=True)
        pending.append((cells, len(windows) + inverse.reshape(len(cells), -1)))
        windows.extend(img[y:y + p, x:x + p] for y, x in unique)
        if len(windows) >= flush_windows:
            flush()
    flush()
    return Heatmap(scores, done, heatmap.cell_um, heatmap.l0_mpp, heatmap.l0_origin)


def _by_block(h_rc: np.ndarray, block_cells: int) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Cells ``h_rc`` (N, 2) grouped by the ``block_cells × block_cells`` block they lie in: the order that sorts
    them block by block (row-major), and each block's ``(start, stop)`` in that order."""
    blocks = h_rc // block_cells
    order = np.lexsort((blocks[:, 1], blocks[:, 0]))
    starts = np.flatnonzero(np.r_[True, (np.diff(blocks[order], axis=0) != 0).any(axis=1)])
    return order, list(zip(starts.tolist(), np.r_[starts[1:], len(h_rc)].tolist()))


def candidate_cells(screen: Heatmap, fine_shape: tuple[int, int], fine_cell_um: float,
                    threshold: float) -> np.ndarray:
    """Cells of a fine grid (``fine_shape``, ``fine_cell_um``; same origin) whose centre lies in a coarse cell of
    ``screen`` scoring ``>= threshold``. Returns bool of ``fine_shape``."""
    hot = screen.h_prob >= threshold
    rows, cols = fine_shape
    c_r = np.minimum(((np.arange(rows) + 0.5) * fine_cell_um / screen.cell_um).astype(np.int64), hot.shape[0] - 1)
    c_c = np.minimum(((np.arange(cols) + 0.5) * fine_cell_um / screen.cell_um).astype(np.int64), hot.shape[1] - 1)
    return hot[np.ix_(c_r, c_c)]


def compute_heatmap_fast(slide: Slide, tissue: TissueMask, detector: Detector, screen: Detector,
                         screen_threshold: float, grow_threshold: float, readers: int = 2,
                         block_cells: int = 2, progress: Callable[[int, int], None] | None = None,
                         rescore_from: float | None = None) -> tuple[Heatmap, HeatmapTiming]:
    """``--mode fast``: the coarse ``screen`` model over all tissue, then ``detector`` only where it is needed.

    1. the screen scores every tissue cell at its own resolution; fine cells centred in a screen cell scoring
       ``>= screen_threshold`` (low on purpose: high sensitivity) are the candidates (:func:`candidate_cells`);
    2. the fine model scores the candidates; then, round after round, the unscored tissue neighbours (8-connected)
       of every fine cell scoring ``>= grow_threshold`` (the lesion threshold), until none is left.

    Every connected region of fine cells ``>= grow_threshold`` that holds a candidate is thus scored whole, with
    its ring of neighbours, so its lesion outline and size are exactly those of ``--mode thorough``; a region the
    screen missed entirely is not found. Unscored cells have probability 0 but stay tissue in ``h_tissue``.
    Isolated tumour cells (< 0.2 mm) are easily missed by the screen: fast mode can miss ITC. Candidates are
    sparse, so the fine cells are read in small blocks (``block_cells``) to avoid reading unscored tissue
    (OpenSlide's CPU cost follows the pixels read: on the 1.5 cm² speed slide the screen's 8,834 candidates took
    6.5 CPU s to read in blocks of 4 × 4 cells, 17,300 cells read, and 5.4 s in blocks of 2 × 2, 10,700 read).
    A cell's patch does not depend on its block (:func:`micromets.tiles.read_block`), so every cell scored here
    has the probability ``--mode thorough`` gives it, also after ``rescore_from`` (:func:`context_check` and
    :func:`rescore_edge_cells`, once the regions are whole, so that a region and an edge are the same in both
    modes).
    """
    from scipy import ndimage

    start = time.perf_counter()
    coarse, coarse_timing = compute_heatmap(slide, tissue, screen, readers=readers)
    cell_um = detector.patch_px * detector.input_mpp
    tissue_grid = tile_grid(slide, tissue, cell_um)
    h_todo = candidate_cells(coarse, tissue_grid.shape, cell_um, screen_threshold) & tissue_grid.h_tissue
    timing = HeatmapTiming(read_s=coarse_timing.read_s, screen_s=time.perf_counter() - start,
                           n_screen_patches=coarse_timing.n_patches)
    h_prob = np.zeros(tissue_grid.shape, np.float32)
    h_done = np.zeros(tissue_grid.shape, bool)
    while h_todo.any():
        _score_cells(slide, TileGrid(cell_um, slide.l0_mpp, h_todo), detector, h_prob, timing, None, block_cells,
                     readers, progress, int(h_done.sum() + h_todo.sum()))
        h_done |= h_todo
        grown = ndimage.binary_dilation(h_prob >= grow_threshold, structure=np.ones((3, 3), bool))
        h_todo = grown & tissue_grid.h_tissue & ~h_done
    heatmap = Heatmap(h_prob, tissue_grid.h_tissue, cell_um, slide.l0_mpp)
    if rescore_from is not None:
        context_check(slide, detector, heatmap, rescore_from, timing, readers)
        rescore_edge_cells(slide, detector, heatmap, rescore_from, timing, readers)
    return heatmap, timing


def local_heatmap(slide: Slide, detector: Detector, l0_box: tuple[float, float, float, float], stride_um: float,
                  chunk_rows: int = 8, l0_anchor: tuple[float, float] | None = None) -> Heatmap:
    """The detector's tumour probability over the level-0 box ``(x0, y0, x1, y1)`` on a grid of ``stride_um``
    (rounded to whole pixels at the model's µm/px): cell ``(r, c)`` holds the probability of the model window
    centred on its centre. The window still sees ``cell_um`` of tissue; only the positions are finer, so the
    iso-line of this map places a deposit's edge to within a stride instead of a whole window (the heatmap's own
    cells are one window each). One read of the box with half a window of surroundings (:meth:`Slide.read_window`),
    scored ``chunk_rows`` rows of windows at a time, so memory stays bounded whatever the box. Given ``l0_anchor``
    (level-0 ``(x, y)``, such as a heatmap's ``l0_origin``), the grid starts a whole number of strides from it,
    at or before the box's corner, so the windows do not follow where the box happens to begin.
    """
    p = detector.patch_px
    stride_px = max(1, round(stride_um / detector.input_mpp))
    k = detector.input_mpp / slide.l0_mpp  # level-0 px per model px
    x0, y0, x1, y1 = l0_box
    if l0_anchor is not None:
        x0, y0 = (a + math.floor((v - a) / (stride_px * k)) * stride_px * k for v, a in zip((x0, y0), l0_anchor))
    cols, rows = (max(1, int(np.ceil(side / (stride_px * k) - 1e-6))) for side in (x1 - x0, y1 - y0))
    before_l0 = (p - stride_px) / 2 * k  # a window's origin lies this far before its cell's origin
    img = slide.read_window(x0 - before_l0, y0 - before_l0, (cols - 1) * stride_px + p, (rows - 1) * stride_px + p,
                            detector.input_mpp)
    h_prob = np.zeros((rows, cols), np.float32)
    for r0 in range(0, rows, chunk_rows):
        band = range(r0, min(rows, r0 + chunk_rows))
        windows = np.stack([img[r * stride_px:r * stride_px + p, c * stride_px:c * stride_px + p]
                            for r in band for c in range(cols)])
        h_prob[band.start:band.stop] = detector.predict(windows).reshape(len(band), cols)
    return Heatmap(h_prob, np.ones_like(h_prob, bool), stride_px * detector.input_mpp, slide.l0_mpp, (x0, y0))
