"""Cytokeratin immunohistochemistry (IHC): DAB-positive tumour cells and clusters on a slide (issue 4).

In a sentinel node stained for cytokeratin (AE1/AE3, CAM5.2), epithelial tumour cells have brown DAB in their
cytoplasm and a blue haematoxylin nucleus; lymph-node cells are cytokeratin-negative. Without training data, the
stain's physics finds them:

1. Colour deconvolution (Ruifrok & Johnston 2001, :mod:`micromets.stain`) in optical density with the slide's
   own H and DAB vectors, estimated on the tissue thumbnail (Macenko et al. 2009), each falling back to the
   standard H-DAB vector when it cannot be estimated (e.g. a negative slide has no DAB to estimate from).
2. DAB map at `work_mpp` (≈ 1 µm/px), smoothed by a Gaussian of σ = 1 µm. A pixel is positive when its DAB
   amount is ``>= DAB_OD_MIN`` (0.15 OD: a clearly visible light brown; weaker is non-specific background).
   Holes smaller than ``HOLE_UM2`` (the DAB-negative nuclei inside stained cytoplasm) are filled.
3. Rejected, so that only tumour cells remain:
   - faint background: below ``DAB_OD_MIN`` (a tissue fold doubles the background but stays below it);
   - edge artefacts: positive pixels within ``EDGE_UM`` (8 µm) of bare glass outside the section (a glass area
     of at least ``EDGE_GLASS_MIN_UM2``; smaller holes are lumens or fat) — DAB pools at section edges;
   - specks: positive components smaller than ``MIN_CELL_UM2`` (30 µm², a disc of 6.2 µm — smaller than a
     carcinoma cell); boundary: area ``>=`` keeps;
   - pigment that is not DAB (haemosiderin: golden brown; anthracotic carbon: black), judged per component on
     hue and texture. Hue: the DAB-weighted mean OD of the component is compared with the cone of H–DAB
     mixtures (`pigment_score`: out-of-plane residual and "yellower than DAB", as a fraction of the OD);
     ``> PIGMENT_SCORE_MAX`` (0.035) is pigment. Texture: in a cytokeratin-positive cell DAB fills the
     cytoplasm, so most positive pixels have more DAB than H; black pigment deconvolves mainly into "H"
     (DAB-dominant fraction ``< DAB_DOMINANT_MIN`` = 0.25), granular pigment leaves H-dominant gaps between
     granules (fraction ``< GRANULAR_DOMINANT_MIN`` = 0.7 together with a score ``> GRANULAR_SCORE_MAX`` = 0.02).
     On the phantoms tumour clusters score 0.010–0.018 with fractions 0.76–0.83, pigment 0.024–0.07 with
     0.0–0.68; the real skimage IHC image scores ≤ 0.01 with fraction ≥ 0.94.
4. Cells: haematoxylin nuclei inside the kept components — H amount (σ = 0.5 µm smoothing) above the
   component's Otsu threshold (nucleus vs. cytoplasm) and ``>= NUCLEUS_H_MIN`` — split by a distance-transform
   watershed with markers at least ``NUCLEUS_SPACING_UM`` apart. Segments of at least ``MIN_NUCLEUS_UM2``
   whose centre lies ``NUCLEUS_INSET_UM`` inside the component count (a negative neighbour's nucleus
   overlapping the rim does not). A kept component without a counted nucleus (a cell cut through its
   cytoplasm) counts as one cell.
5. Clusters: kept components closed by 2 µm (cells that touch form one cluster), outlined in level-0 pixels.
   Grouping by the 75 µm gap, Feret diameter and the AJCC "< 200 cells" rule are applied downstream
   (:func:`micromets.measure.measure_lesions`, :mod:`micromets.rules.ajcc8`) with the cell counts given here.

The slide is read in square windows (core ``WINDOW_CELLS`` heatmap cells plus a ``MARGIN_UM`` margin), two at a
time in threads; memory is flat in slide size. Windows without searched tissue are not read; within a window, sides
farther than ``SEARCH_REACH_UM`` from searched tissue are cropped away (glass: the findings are those of the whole
window, see `find_positive_cells`' ``glass_beyond``). The expensive per-pixel work is the DAB map (lookup-table
deconvolution and smoothing); everything after the threshold visits only the positive pixels, and nuclei are split
only inside the kept components' boxes. The heatmap holds, per ``CELL_UM`` cell, the fraction of its area that is
DAB-positive tumour (0–1).
"""

from __future__ import annotations

import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np
import shapely
from scipy import ndimage as ndi
from skimage import feature, filters, morphology, segmentation

from micromets import stain
from micromets.errors import MicrometsError
from micromets.heatmap import Heatmap

if TYPE_CHECKING:
    from micromets.slide import Slide
    from micromets.tissue import TissueMask

#: Positive pixel: DAB amount (OD units, after σ = 1 µm smoothing) at least this.
DAB_OD_MIN = 0.15
#: DAB-negative holes up to this area (µm²) inside positive regions are filled (nuclei in stained cytoplasm).
HOLE_UM2 = 150.0
#: Positive components smaller than this (µm²) are specks, not cells.
MIN_CELL_UM2 = 30.0
#: Positive pixels closer than this (µm) to bare glass are edge artefact.
EDGE_UM = 8.0
#: Glass areas smaller than this (µm²) are holes in the section (lumens, fat cells), not its edge.
EDGE_GLASS_MIN_UM2 = 20_000.0
#: Bare glass: OD below this in every channel, over a whole square of GLASS_BOX_UM µm.
GLASS_OD = 0.06
GLASS_BOX_UM = 8.0
#: Pigment (hue): `pigment_score` of a component's DAB-weighted mean OD above this.
PIGMENT_SCORE_MAX = 0.035
#: Pigment (black): fewer than this fraction of a component's positive pixels have more DAB than H.
DAB_DOMINANT_MIN = 0.25
#: Pigment (granular and off-hue): score above GRANULAR_SCORE_MAX and DAB-dominant fraction below
#: GRANULAR_DOMINANT_MIN (granules leave H-dominant gaps; cytokeratin fills the cytoplasm).
GRANULAR_SCORE_MAX = 0.02
GRANULAR_DOMINANT_MIN = 0.7
#: Nucleus pixel: haematoxylin amount (OD, σ = 0.5 µm smoothing) above Otsu's threshold of the component's
#: H amounts (nucleus vs. cytoplasm), and at least this.
NUCLEUS_H_MIN = 0.12
#: Nuclei are split by watershed with markers at least this far apart (µm).
NUCLEUS_SPACING_UM = 4.0
#: A nucleus counts only if its centre lies at least this deep (µm) inside the positive component (a
#: DAB-negative neighbour's nucleus touching the component's rim is not a tumour cell).
NUCLEUS_INSET_UM = 2.5
#: Nucleus segments smaller than this (µm²) are not counted.
MIN_NUCLEUS_UM2 = 8.0
#: DAB-dominant area (µm², in the sampled squares) needed to estimate the slide's DAB vector (≈ 50 cells).
DAB_ESTIMATE_UM2 = 5000.0
#: Windows are read wherever the tissue mask or a thumbnail pixel with OD (max over RGB) above this lies.
SEARCH_OD = 0.1
#: Heatmap cell side (µm).
CELL_UM = 16.0
#: Window core, in heatmap cells per side, and margin (µm) read around it.
WINDOW_CELLS = 128
MARGIN_UM = 32.0
#: A pyramid level within this fraction of the requested work resolution is read as stored (e.g. 1.01 µm/px on a
#: 0.2527 µm/px Aperio slide when 1 µm/px is asked for), not a finer level read and shrunk (4× the pixels there).
LEVEL_MPP_TOLERANCE = 0.1
#: Within a window, pixels farther than this (µm) from every searched cell are glass, like the windows that are not
#: read at all: a side of at least CROP_MIN_UM2 of them is cropped away (not read where the level is read directly).
SEARCH_REACH_UM = 64.0
CROP_MIN_UM2 = EDGE_GLASS_MIN_UM2


@dataclass
class PositiveCells:
    """DAB-positive tumour cells in one image (pixel coordinates of that image)."""

    positive: np.ndarray      # bool (rows, cols): kept DAB-positive tumour pixels (holes filled)
    cells_rc: np.ndarray      # (N, 2) float (row, col) of counted cells
    rejected: dict            # counts of rejected components by reason


@dataclass
class IhcFindings:
    """Result of `analyze_ihc` on one slide."""

    heatmap: Heatmap          # DAB-positive fraction per CELL_UM cell
    cells_l0: np.ndarray      # (N, 2) float level-0 px centres of DAB-positive tumour cells
    clusters: list[dict]      # {"geometry_l0": shapely Polygon, "n_cells": int}
    stain_matrix: np.ndarray = field(default_factory=lambda: stain.STANDARD_HDAB.copy())
    stain_note: str = ""
    background_rgb: tuple[float, float, float] = (255.0, 255.0, 255.0)
    rejected: dict = field(default_factory=dict)
    timing_s: dict = field(default_factory=dict)


def _disk(radius_px: float) -> np.ndarray:
    return morphology.disk(max(1, int(round(radius_px))))


def find_positive_cells(rgb: np.ndarray, px_um: float, matrix: np.ndarray = stain.STANDARD_HDAB,
                        background: tuple[float, float, float] | np.ndarray = (255, 255, 255),
                        edge_exclusion: bool = True,
                        glass_beyond: tuple[bool, bool, bool, bool] = (False, False, False, False)) -> PositiveCells:
    """DAB-positive tumour cells of an RGB image with `px_um` µm pixels (steps 2–4 of the module docstring).

    `matrix` is the stain matrix (rows H, DAB, residual) and `background` the glass RGB. With
    `edge_exclusion` positive pixels within `EDGE_UM` of bare glass are dropped. `glass_beyond` (top, bottom,
    left, right) marks sides beyond which lies broad glass outside the section (an image cropped out of a larger
    one away from the tissue): glass touching such a side belongs to it.
    """
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise MicrometsError(f"IHC analysis needs a uint8 RGB image, got {rgb.dtype} {rgb.shape}")
    if not px_um > 0:
        raise MicrometsError(f"pixel size must be > 0 µm, got {px_um}")
    px_um2 = px_um * px_um
    rejected = {"speck": 0, "pigment": 0, "edge_px": 0}
    kept = np.zeros(rgb.shape[:2], bool)
    none = PositiveCells(kept, np.zeros((0, 2)), rejected)
    positive = ndi.gaussian_filter(stain.dye_amount(rgb, matrix, 1, background), 1.0 / px_um,
                                   truncate=2.5) >= DAB_OD_MIN
    # from here on only the (few) positive pixels are visited: their coordinates in raster order
    rr, cc = np.divmod(np.flatnonzero(positive), positive.shape[1])
    if edge_exclusion and len(rr):
        drop = _near_glass(rgb, rr, cc, px_um, background, glass_beyond)
        rejected["edge_px"] = int(drop.sum())
        positive[rr[drop], cc[drop]] = False
        rr, cc = rr[~drop], cc[~drop]
    if len(rr) == 0:
        return none
    labels, n = ndi.label(positive, structure=np.ones((3, 3)))
    lab = labels[rr, cc]
    area_px = np.bincount(lab, minlength=n + 1)
    big = area_px * px_um2 >= MIN_CELL_UM2
    big[0] = False
    rejected["speck"] = int(n - big.sum())
    # hue and texture of the big components, over their DAB-positive pixels
    sel = big[lab]
    lab_big = lab[sel]
    inv = np.linalg.inv(np.asarray(matrix, np.float64)).astype(np.float32)
    od_sel = stain.optical_density(rgb[rr[sel], cc[sel]], background)
    conc = od_sel @ inv
    weight = np.maximum(conc[:, 1], 0) ** 2          # DAB-rich pixels speak for the component's hue
    mean_od = np.column_stack([np.bincount(lab_big, weight * od_sel[:, ch], minlength=n + 1) for ch in range(3)])
    dab_dominant = np.bincount(lab_big, conc[:, 1] > conc[:, 0], minlength=n + 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        score = pigment_score(mean_od, matrix)
        dominant_frac = dab_dominant / area_px
    pigment = big & ((score > PIGMENT_SCORE_MAX) | (dominant_frac < DAB_DOMINANT_MIN)
                     | ((score > GRANULAR_SCORE_MAX) & (dominant_frac < GRANULAR_DOMINANT_MIN)))
    keep = big & ~pigment
    rejected["pigment"] = int(pigment.sum())
    spacing_px = max(1, int(round(NUCLEUS_SPACING_UM / px_um)))
    pad = spacing_px + 2
    # bounding boxes (row, col) of the kept components
    kept_px = keep[lab]
    rc_kept = np.column_stack([rr[kept_px], cc[kept_px]])
    lo = np.full((n + 1, 2), max(rgb.shape[:2]))
    hi = np.zeros((n + 1, 2), np.int64)
    np.minimum.at(lo, lab[kept_px], rc_kept)
    np.maximum.at(hi, lab[kept_px], rc_kept)
    cells: list[np.ndarray] = []
    for lab_id in np.flatnonzero(keep):
        r0, c0 = np.maximum(lo[lab_id] - pad, 0)
        r1, c1 = np.minimum(hi[lab_id] + 1 + pad, rgb.shape[:2])
        comp = morphology.remove_small_holes(labels[r0:r1, c0:c1] == lab_id, max_size=round(HOLE_UM2 / px_um2))
        kept[r0:r1, c0:c1] |= comp
        h = ndi.gaussian_filter(stain.dye_amount(rgb[r0:r1, c0:c1], matrix, 0, background), 0.5 / px_um)
        dist = ndi.distance_transform_edt(np.pad(comp, 1), sampling=px_um)[1:-1, 1:-1]
        h_in = h[comp]
        h_min = max(NUCLEUS_H_MIN, float(filters.threshold_otsu(h_in)) if np.ptp(h_in) > 0 else np.inf)
        found = _split_nuclei(comp & (h >= h_min), spacing_px, MIN_NUCLEUS_UM2 / px_um2)
        if len(found):
            rc = np.clip(np.rint(found).astype(int), 0, np.array(comp.shape) - 1)
            found = found[dist[rc[:, 0], rc[:, 1]] >= NUCLEUS_INSET_UM]
        if len(found) == 0:
            found = np.array([np.unravel_index(int(np.argmax(dist)), dist.shape)], float)
        cells.append(found + np.array([r0, c0]))
    return PositiveCells(kept, np.concatenate(cells) if cells else np.zeros((0, 2)), rejected)


def _near_glass(rgb: np.ndarray, rr: np.ndarray, cc: np.ndarray, px_um: float, background,
                glass_beyond: tuple[bool, bool, bool, bool]) -> np.ndarray:
    """Which of the pixels ``(rr, cc)`` lie within EDGE_UM of broad glass: a whole GLASS_BOX_UM square below
    GLASS_OD in every channel (gaps between cells are not glass), in a glass area of at least EDGE_GLASS_MIN_UM2
    in the image or touching a `glass_beyond` side. Judged on a 2 µm sampling grid, which is plenty for an 8 µm
    rule and 4–16× cheaper. Squares are centred as in `scipy.ndimage` filters and clipped at the image border;
    beyond a `glass_beyond` side the grid is extended by glass as far as the squares reach."""
    step = max(1, int(round(2.0 / px_um)))
    # glass: every channel brighter than background · 10^-GLASS_OD, i.e. at least the next integer level
    level = np.floor(np.asarray(background, np.float64) * 10.0 ** -GLASS_OD).astype(int) + 1
    small = rgb[::step, ::step]
    glass = (small[..., 0] >= level[0]) & (small[..., 1] >= level[1]) & (small[..., 2] >= level[2])
    box = max(2, round(GLASS_BOX_UM / (px_um * step)))
    reach = int(math.ceil((EDGE_UM + GLASS_BOX_UM / 2) / (px_um * step)))
    top, bottom, left, right = ((box + reach) * bool(side) for side in glass_beyond)
    glass = np.pad(glass, ((top, bottom), (left, right)), constant_values=True)
    broad = ~_any_in_box(~glass, box // 2, box - 1 - box // 2)
    if not broad.any():
        return np.zeros(len(rr), bool)
    # only glass outside the section (large areas), not lumens, sinuses or fat cells inside it
    labels, _ = ndi.label(broad)
    area = np.bincount(labels.ravel()) * (px_um * step) ** 2
    beyond = np.ones(glass.shape, bool)
    beyond[top:glass.shape[0] - bottom, left:glass.shape[1] - right] = False
    area[labels[beyond]] = np.inf
    area[0] = 0.0
    broad = (area >= EDGE_GLASS_MIN_UM2)[labels]
    if not broad.any():
        return np.zeros(len(rr), bool)
    return _any_in_box(broad, reach, reach)[rr // step + top, cc // step + left]


def _any_in_box(mask: np.ndarray, before: int, after: int) -> np.ndarray:
    """True where any pixel of the square from ``before`` pixels above/left to ``after`` below/right is True
    (clipped at the border): a binary dilation, separable, each axis by ORs of shifted copies whose reach
    doubles (log2 of the square's side operations)."""
    width = before + after + 1
    for axis in (0, 1):
        pad = [(0, 0), (0, 0)]
        pad[axis] = (before, after)
        acc = np.moveaxis(np.pad(mask, pad), axis, 0)
        span = 1
        while span < width:
            k = min(span, width - span)
            acc = acc[:-k] | acc[k:]
            span += k
        mask = np.moveaxis(acc, 0, axis)
    return np.ascontiguousarray(mask)


def pigment_score(od: np.ndarray, matrix: np.ndarray = stain.STANDARD_HDAB) -> np.ndarray:
    """How far OD vectors (..., 3) lie outside the cone of H–DAB mixtures, as a fraction of their length.

    A mix of haematoxylin and DAB is ``a·H + b·D`` with ``a, b >= 0``. Out of the H–DAB plane (the residual
    amount, along the unit normal) or beyond DAB on the far side from H (negative H amount: yellower than DAB)
    is colour that neither dye makes. Returns ``hypot(residual, min(H, 0)·sin∠(H, D)) / |od|`` (0 = dye mix,
    ≈ 0.13 for haemosiderin- or carbon-like pure pigment against the standard vectors).
    """
    od = np.asarray(od, np.float64)
    c = od @ np.linalg.inv(np.asarray(matrix, np.float64))
    sin_hd = np.sqrt(max(0.0, 1.0 - float(np.dot(matrix[0], matrix[1])) ** 2))
    return np.hypot(c[..., 2], np.minimum(c[..., 0], 0.0) * sin_hd) / np.linalg.norm(od, axis=-1)


def _split_nuclei(nuc: np.ndarray, spacing_px: int, min_px: float) -> np.ndarray:
    """Centroids (row, col) of nuclei in a mask, touching nuclei split by a distance-transform watershed.

    Markers are the maxima of the (σ = 1 px smoothed) distance transform within a square of side
    ``2·spacing_px + 1``; a nucleus blob without such a maximum gets a marker at its own maximum.
    """
    if not nuc.any():
        return np.zeros((0, 2))
    smooth = ndi.gaussian_filter(ndi.distance_transform_edt(np.pad(nuc, 1))[1:-1, 1:-1], 1.0)
    peaks = nuc & (smooth >= ndi.maximum_filter(smooth, size=2 * spacing_px + 1))
    markers, n_markers = ndi.label(peaks, structure=np.ones((3, 3)))
    blobs, n_blobs = ndi.label(nuc)
    missing = np.setdiff1d(np.arange(1, n_blobs + 1), np.unique(blobs[peaks]))
    if len(missing):
        for k, (r, c) in enumerate(ndi.maximum_position(smooth, blobs, missing), start=n_markers + 1):
            markers[r, c] = k
    seg = segmentation.watershed(-smooth, markers, mask=nuc)
    n = int(seg.max())
    area = np.bincount(seg.ravel(), minlength=n + 1)[1:]
    centres = np.array(ndi.center_of_mass(nuc, seg, np.arange(1, n + 1)), float).reshape(-1, 2)
    return centres[area >= min_px]


def slide_stain(slide: Slide, tissue: TissueMask, work_mpp: float,
                n_samples: int = 48, sample_um: float = 96.0) -> tuple[np.ndarray, str, tuple[float, float, float]]:
    """Stain matrix, note, and glass RGB of a slide.

    Glass RGB: median of the non-tissue thumbnail pixels brighter than 200 in every channel (255 if < 50 such).
    The vectors (:func:`micromets.stain.estimate_stain_vectors`) come from up to `n_samples` squares of
    `sample_um` µm read at `work_mpp` around the thumbnail pixels with most DAB (standard deconvolution: DAB
    amount × DAB share of H + DAB; squares at least one side apart) — a thumbnail mixes DAB with the nuclei.
    DAB is estimated only from at least ``DAB_ESTIMATE_UM2`` of DAB-dominant pixels (on the phantoms: positive
    slides 13,000–22,000 µm², slides with only pigment and specks ≤ 1,900 µm²); otherwise it stays standard.
    """
    rgb = tissue.rgb
    glass = rgb[~tissue.mask]
    glass = glass[(glass[:, 0] > 200) & (glass[:, 1] > 200) & (glass[:, 2] > 200)]
    background = tuple(float(v) for v in np.median(glass, axis=0)) if len(glass) >= 50 else (255.0, 255.0, 255.0)
    od_thumb = stain.optical_density(rgb, background)
    amounts = stain.deconvolve(od_thumb, stain.STANDARD_HDAB)
    share = amounts[..., 1] / np.maximum(amounts[..., 0] + amounts[..., 1], 1e-6)
    brownness = np.where(tissue.mask | (_channel_max(od_thumb) > SEARCH_OD), amounts[..., 1] * share, 0.0)
    k = tissue.l0_per_px
    step = max(1, int(round(sample_um / tissue.mask_mpp)))
    peaks = feature.peak_local_max(brownness, min_distance=step, threshold_abs=0.01, num_peaks=n_samples,
                                   exclude_border=False)
    l0_side = int(round(sample_um / slide.l0_mpp))
    samples = []
    for t_r, t_c in peaks:
        l0_x = int((t_c + 0.5) * k - l0_side / 2)
        l0_y = int((t_r + 0.5) * k - l0_side / 2)
        patch = slide.read_at_mpp(max(0, l0_x), max(0, l0_y), l0_side, l0_side, work_mpp)
        samples.append(stain.optical_density(patch, background).reshape(-1, 3))
    pixels = np.concatenate(samples) if samples else od_thumb[tissue.mask]
    matrix, note = stain.estimate_stain_vectors(pixels, min_dab_pixels=round(DAB_ESTIMATE_UM2 / work_mpp**2))
    return matrix, note, background


def analyze_ihc(slide: Slide, tissue: TissueMask, work_mpp: float = 1.0, workers: int = 2) -> IhcFindings:
    """DAB-positive tumour cells, their clusters and a DAB heatmap of a cytokeratin IHC slide.

    The slide is read at `work_mpp` µm/px (≈ 1; 0.5 for more detail at 4× the time) — or at the resolution of a
    pyramid level within LEVEL_MPP_TOLERANCE of it (`work_resolution`) — in windows over the tissue cells of
    `tissue`; `workers` windows are processed at a time. Cell centres and cluster outlines come out in level-0
    pixels. See the module docstring for the rules and thresholds.
    """
    if not 0.1 <= work_mpp <= 4.0:
        raise MicrometsError(f"IHC work resolution {work_mpp} µm/px outside 0.1–4 (cells need ≲ 1 µm/px)")
    from threadpoolctl import threadpool_limits

    # The windows already run `workers` at a time; BLAS threads for the 3 × 3 stain products on top of them only
    # oversubscribe the cores, and on a busy machine their hand-offs cost far more than the products (measured:
    # 0.22 s instead of 0.004 s for one thumbnail deconvolution).
    with threadpool_limits(limits=1, user_api="blas"):
        return _analyze_ihc(slide, tissue, work_mpp, workers)


def work_resolution(slide: Slide, work_mpp: float) -> float:
    """The µm/px to analyse `slide` at: the pyramid level's closest to `work_mpp` when it lies within
    LEVEL_MPP_TOLERANCE (relative) of it, so that the level is read as stored; otherwise `work_mpp` (resampled)."""
    level_mpp = np.asarray(slide.level_downsamples, np.float64) * slide.l0_mpp
    closest = float(level_mpp[np.argmin(np.abs(np.log(level_mpp / work_mpp)))])
    return closest if abs(closest / work_mpp - 1) <= LEVEL_MPP_TOLERANCE else work_mpp


def _analyze_ihc(slide: Slide, tissue: TissueMask, work_mpp: float, workers: int) -> IhcFindings:
    from micromets.tiles import tissue_fraction

    t0 = time.perf_counter()
    work_mpp = work_resolution(slide, work_mpp)
    matrix, note, background = slide_stain(slide, tissue, work_mpp)
    cell_px = max(1, round(CELL_UM / work_mpp))
    cell_um = cell_px * work_mpp
    h_shape = (math.ceil(slide.l0_height * slide.l0_mpp / cell_um), math.ceil(slide.l0_width * slide.l0_mpp / cell_um))
    # IHC counterstain is pale: besides the tissue mask, any thumbnail pixel that absorbs light is searched
    absorbs = _channel_max(stain.optical_density(tissue.rgb, background)) > SEARCH_OD
    h_tissue = tissue_fraction(replace(tissue, mask=tissue.mask | absorbs), cell_um, h_shape) > 0
    h_prob = np.zeros(h_shape, np.float32)
    margin_px = int(math.ceil(MARGIN_UM / work_mpp))
    s = work_mpp / slide.l0_mpp  # level-0 px per work px
    near_tissue = ndi.binary_dilation(h_tissue, iterations=1)
    # core cells this close to a searched cell (SEARCH_REACH_UM plus the margin, so that a cut-away margin is as
    # far from the searched cells as a cut-away core cell)
    reach_cells = int(math.ceil((SEARCH_REACH_UM + margin_px * work_mpp) / cell_um))
    searched_reach = ndi.binary_dilation(h_tissue, np.ones((3, 3), bool), iterations=reach_cells)
    step = max(1, int(round(2.0 / work_mpp)))  # the glass grid of `_near_glass`: crops start on it
    level = slide.level_for_mpp(work_mpp)
    native = math.isclose(slide.level_downsamples[level] * slide.l0_mpp, work_mpp, rel_tol=1e-9)  # read as stored
    exact_crop = native and s == round(s)  # a sub-read is then pixel for pixel the same as the window's part
    windows = [(r, c) for r in range(0, h_shape[0], WINDOW_CELLS) for c in range(0, h_shape[1], WINDOW_CELLS)
               if near_tissue[r:r + WINDOW_CELLS, c:c + WINDOW_CELLS].any()]

    def run(window: tuple[int, int]):
        h_r0, h_c0 = window
        n_r = min(WINDOW_CELLS, h_shape[0] - h_r0)
        n_c = min(WINDOW_CELLS, h_shape[1] - h_c0)
        w_r0, w_c0 = h_r0 * cell_px - margin_px, h_c0 * cell_px - margin_px   # work px of the read's corner
        w_h, w_w = n_r * cell_px + 2 * margin_px, n_c * cell_px + 2 * margin_px
        crop, glass_beyond = _crop(searched_reach[h_r0:h_r0 + n_r, h_c0:h_c0 + n_c], cell_px, margin_px, step,
                                   work_mpp)
        (c_r0, c_r1), (c_c0, c_c1) = crop
        if exact_crop:
            rgb = slide.read_region(int((w_c0 + c_c0) * s), int((w_r0 + c_r0) * s), level, c_c1 - c_c0, c_r1 - c_r0)
        else:  # the whole window (a sub-read would land on another sub-pixel phase of the level), then the crop
            l0_x, l0_y = int(math.floor(w_c0 * s)), int(math.floor(w_r0 * s))
            if native:
                rgb = slide.read_region(l0_x, l0_y, level, w_w, w_h)
            else:
                rgb = _fit(slide.read_at_mpp(l0_x, l0_y, int(math.ceil(w_w * s)), int(math.ceil(w_h * s)), work_mpp),
                           w_h, w_w)
            rgb = rgb[c_r0:c_r1, c_c0:c_c1]
        found = find_positive_cells(rgb, work_mpp, matrix, background, glass_beyond=glass_beyond)
        rr, cc = np.divmod(np.flatnonzero(found.positive), c_c1 - c_c0)
        rr, cc = rr + c_r0, cc + c_c0
        core_r, core_c = rr - margin_px, cc - margin_px
        in_core = (core_r >= 0) & (core_r < n_r * cell_px) & (core_c >= 0) & (core_c < n_c * cell_px)
        counts = np.bincount(core_r[in_core] // cell_px * n_c + core_c[in_core] // cell_px, minlength=n_r * n_c)
        frac = (counts / cell_px**2).astype(np.float32).reshape(n_r, n_c)
        rc = found.cells_rc + np.array([c_r0, c_c0])
        in_core = ((rc[:, 0] >= margin_px) & (rc[:, 0] < margin_px + n_r * cell_px)
                   & (rc[:, 1] >= margin_px) & (rc[:, 1] < margin_px + n_c * cell_px))
        cells = np.column_stack([(w_c0 + rc[in_core, 1] + 0.5) * s, (w_r0 + rc[in_core, 0] + 0.5) * s])
        pieces = []
        if len(rr):
            box = shapely.box((w_c0 + margin_px) * s, (w_r0 + margin_px) * s,
                              (w_c0 + margin_px + n_c * cell_px) * s, (w_r0 + margin_px + n_r * cell_px) * s)
            polys = _outlines_l0(rr, cc, (w_h, w_w), work_mpp, slide.l0_mpp, (w_c0 * s, w_r0 * s))
            pieces = [p for p in shapely.intersection(np.asarray(polys, dtype=object), box) if not p.is_empty]
        return window, frac, cells, pieces, found.rejected, (c_r1 - c_r0) * (c_c1 - c_c0)

    cells_all, pieces_all = [], []
    rejected = {"speck": 0, "pigment": 0, "edge_px": 0}
    n_px = 0
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for (h_r0, h_c0), frac, cells, pieces, rej, px in pool.map(run, windows):
            h_prob[h_r0:h_r0 + frac.shape[0], h_c0:h_c0 + frac.shape[1]] = frac
            cells_all.append(cells)
            pieces_all.extend(pieces)
            for k, v in rej.items():
                rejected[k] += v
            n_px += px
    t_windows = time.perf_counter() - t0
    cells_l0 = np.concatenate(cells_all) if cells_all else np.zeros((0, 2))
    clusters = _clusters(pieces_all, cells_l0)
    h_tissue |= h_prob > 0
    heatmap = Heatmap(h_prob=h_prob, h_tissue=h_tissue, cell_um=cell_um, l0_mpp=slide.l0_mpp)
    timing = {"windows": round(t_windows, 3), "total": round(time.perf_counter() - t0, 3), "n_windows": len(windows),
              "analysed_mpx": round(n_px / 1e6, 2)}
    return IhcFindings(heatmap, cells_l0, clusters, matrix, note, background, rejected, timing)


def _crop(reach: np.ndarray, cell_px: int, margin_px: int, step: int,
          px_um: float) -> tuple[tuple[tuple[int, int], tuple[int, int]], tuple[bool, bool, bool, bool]]:
    """The part of a window worth analysing: the bounding box of its core cells within SEARCH_REACH_UM of a
    searched cell (`reach`, bool per core cell) plus the margin, in window px ``((r0, r1), (c0, c1))``, and which
    sides (top, bottom, left, right) were cut. A side is cut only where at least CROP_MIN_UM2 of glass is left
    out, so that what the cut leaves out is broad glass outside the section; cuts start on the `step` grid."""
    n_r, n_c = reach.shape
    h, w = n_r * cell_px + 2 * margin_px, n_c * cell_px + 2 * margin_px
    rows, cols = np.flatnonzero(reach.any(axis=1)), np.flatnonzero(reach.any(axis=0))
    r0, c0 = rows[0] * cell_px // step * step, cols[0] * cell_px // step * step
    r1, c1 = (rows[-1] + 1) * cell_px + 2 * margin_px, (cols[-1] + 1) * cell_px + 2 * margin_px
    cut = [r0 * w, (h - r1) * w, c0 * h, (w - c1) * h]
    beyond = tuple(bool(px * px_um**2 >= CROP_MIN_UM2) for px in cut)
    top, bottom, left, right = beyond
    return ((r0 if top else 0, r1 if bottom else h), (c0 if left else 0, c1 if right else w)), beyond


def _outlines_l0(rr: np.ndarray, cc: np.ndarray, shape: tuple[int, int], px_um: float, l0_mpp: float,
                 l0_origin: tuple[float, float]) -> list:
    """Level-0 outlines of the pixels ``(rr, cc)`` of an image of `shape` (`px_um` µm/px, its corner at level-0
    `l0_origin`), closed by a 2 µm disk so that cells that touch form one cluster.

    The pixels are grouped by 8-adjacent blocks of 4 disk sides: groups lie farther apart than the closing
    reaches, so each is closed alone in its own box (padded by a disk side, clipped at the image border) — the
    same outlines as closing the whole image, at the cost of the positive areas only.
    """
    from micromets.measure import mask_to_polygons_l0

    disk = _disk(2.0 / px_um)
    pad = len(disk)
    block = 4 * pad
    occupied = np.zeros((shape[0] // block + 1, shape[1] // block + 1), bool)
    occupied[rr // block, cc // block] = True
    groups, _ = ndi.label(occupied, structure=np.ones((3, 3)))
    group_of = groups[rr // block, cc // block]
    s = px_um / l0_mpp
    polys = []
    for g in range(1, int(group_of.max()) + 1):
        r, c = rr[group_of == g], cc[group_of == g]
        r0, c0 = max(0, int(r.min()) - pad), max(0, int(c.min()) - pad)
        crop = np.zeros((min(shape[0], int(r.max()) + pad + 1) - r0, min(shape[1], int(c.max()) + pad + 1) - c0), bool)
        crop[r - r0, c - c0] = True
        merged = ndi.binary_closing(crop, disk, border_value=0) | crop
        polys += mask_to_polygons_l0(merged, px_um, l0_mpp, (l0_origin[0] + c0 * s, l0_origin[1] + r0 * s))
    return polys


def _channel_max(image: np.ndarray) -> np.ndarray:
    """Maximum over the 3 channels of (..., 3) values (elementwise: ~30× faster than a length-3 axis reduction)."""
    return np.maximum(np.maximum(image[..., 0], image[..., 1]), image[..., 2])


def _fit(rgb: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """Crop or pad (white) an image to exactly rows × cols (reads can differ by a pixel from rounding)."""
    if rgb.shape[0] == rows and rgb.shape[1] == cols:
        return rgb
    out = np.full((rows, cols, 3), 255, np.uint8)
    r, c = min(rows, rgb.shape[0]), min(cols, rgb.shape[1])
    out[:r, :c] = rgb[:r, :c]
    return out


def _clusters(pieces: list, cells_l0: np.ndarray) -> list[dict]:
    """Merge window pieces into cluster polygons and count the cells inside each."""
    if not pieces:
        return []
    parts = [p for p in shapely.get_parts(shapely.union_all(np.asarray(pieces, dtype=object)))
             if isinstance(p, shapely.Polygon) and p.area > 0]
    counts = np.zeros(len(parts), np.int64)
    if len(cells_l0) and parts:
        tree = shapely.STRtree(parts)
        points = shapely.points(cells_l0)
        pt_idx, poly_idx = tree.query(points, predicate="intersects")
        owner = np.full(len(cells_l0), -1)
        owner[pt_idx] = poly_idx
        lost = np.flatnonzero(owner < 0)
        if len(lost):
            owner[lost] = tree.query_nearest(points[lost], return_distance=False, all_matches=False)[1]
        counts = np.bincount(owner, minlength=len(parts))
    return [{"geometry_l0": p, "n_cells": int(max(1, n))} for p, n in zip(parts, counts)]
