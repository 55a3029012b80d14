"""Tumour-cell nuclei of an H&E deposit: the count that the AJCC 8 ITC rule (< 200 cells) needs.

A deposit's outline holds tumour cells and the lymphocytes, histiocytes and stromal cells around them; only tumour
nuclei count. Two steps:

1. every nucleus, pale or dense (:func:`nucleus_candidates`). On the stain-normalised image, nuclear absorbance is
   taken as ``255 - R`` (haematoxylin absorbs red most), smoothed (Gaussian, ``SMOOTH_UM``). A pixel is nuclear
   when it is darker by ``MIN_CONTRAST`` than the Gaussian-weighted mean of its ``NEIGHBOURHOOD_UM`` block
   and darker than glass (``GLASS_ABSORBANCE``); holes below ``HOLE_UM2`` are filled, the mask is opened by
   ``OPEN_UM``, objects below ``MIN_OBJECT_UM2`` dropped and touching nuclei split by a watershed on the distance
   transform. A local threshold, not one for the whole region, is what finds the large pale (vesicular) nuclei of
   carcinoma beside dense lymphocytes: a global Otsu threshold on haematoxylin (micromets < 0.4) kept the
   lymphocytes and lost the tumour nuclei.
2. tumour or not (:func:`tumour_nuclei`): the bundled nucleus classifier (``models/nuclei``, a small CNN; its
   card says what it was trained on) scores the ``patch_px`` field centred on each candidate; those at or above
   the card's ``threshold`` are tumour nuclei, and two within ``SAME_NUCLEUS_UM`` count once (a vesicular nucleus
   the watershed cut in two).

Sizes are in µm and µm² so that nothing depends on the image's resolution ``mpp`` (µm per pixel, at most 1); the
image is resampled to the classifier's ``input_mpp``. Stain vectors are estimated from the image itself
(Macenko; the region around a deposit, with its surroundings, is enough tissue).

Measured against tumour nuclei marked by hand on bundled CAMELYON16 tiles that the classifier never saw
(``bench/cell_count.py``, ``bench/data/he_tumour_nuclei_hand.json``): see the model card's ``metrics``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi
from skimage.filters import gaussian, threshold_local
from skimage.measure import label, regionprops
from skimage.morphology import disk, h_maxima, opening, remove_small_holes, remove_small_objects
from skimage.segmentation import watershed

from micromets.errors import MicrometsError
from micromets.tiles import resample

SMOOTH_UM = 0.75
NEIGHBOURHOOD_UM = 16.0
#: a nuclear pixel's absorbance (255 - R, 0-255) above its neighbourhood's mean
MIN_CONTRAST = 2.0
#: below this absorbance a pixel is glass, never nucleus
GLASS_ABSORBANCE = 25.0
HOLE_UM2 = 30.0
OPEN_UM = 1.0
MIN_OBJECT_UM2 = 8.0
#: two tumour nuclei closer than this are one (µm between centres)
SAME_NUCLEUS_UM = 4.0


def nuclei_model_dir() -> Path:
    """The bundled tumour-nucleus classifier."""
    return Path(__file__).parent / "models" / "nuclei"


@dataclass
class Candidates:
    """Every nucleus found in an image: centroids ``xy_px`` (N, 2) as (x, y) in the image's pixels, and areas
    ``area_um2`` (N,)."""

    xy_px: np.ndarray
    area_um2: np.ndarray


@dataclass
class TumourNuclei:
    """The tumour nuclei of an image: centres ``xy_px`` (M, 2) as (x, y) in the caller's pixels, and
    ``n_candidates``, the nuclei of any kind looked at."""

    xy_px: np.ndarray
    n_candidates: int

    def __len__(self) -> int:
        return len(self.xy_px)


def _check(rgb: np.ndarray, mpp: float, mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] < 3:
        raise MicrometsError(f"expected an RGB image (rows, cols, 3), got shape {rgb.shape}")
    if not (isinstance(mpp, (int, float)) and 0 < mpp <= 1.0):
        raise MicrometsError(f"nuclei counting needs 0 < mpp <= 1 µm per pixel, got {mpp!r}")
    mask = np.ones(rgb.shape[:2], bool) if mask is None else np.asarray(mask, dtype=bool)
    if mask.shape != rgb.shape[:2]:
        raise MicrometsError(f"mask shape {mask.shape} does not match the image {rgb.shape[:2]}")
    return np.ascontiguousarray(rgb[..., :3], dtype=np.uint8), mask


def nucleus_candidates(rgb: np.ndarray, mpp: float, mask: np.ndarray | None = None) -> Candidates:
    """Every nucleus of a (stain-normalised) uint8 RGB image whose centroid lies in ``mask``; see the module
    docstring, step 1."""
    rgb, mask = _check(rgb, mpp, mask)
    absorbance = gaussian(255.0 - rgb[..., 0].astype(np.float64), SMOOTH_UM / mpp, preserve_range=True)
    local_mean = threshold_local(absorbance, int(NEIGHBOURHOOD_UM / mpp) | 1, method="gaussian")
    nuclear = (absorbance > local_mean + MIN_CONTRAST) & (absorbance > GLASS_ABSORBANCE)
    nuclear = remove_small_holes(nuclear, max_size=int(HOLE_UM2 / mpp**2))
    nuclear = opening(nuclear, disk(max(1, round(OPEN_UM / mpp))))
    nuclear = remove_small_objects(nuclear, max_size=int(MIN_OBJECT_UM2 / mpp**2))
    distance = gaussian(ndi.distance_transform_edt(nuclear), 1.0)
    labels = watershed(-distance, label(h_maxima(distance, 0.7)), mask=nuclear).astype(np.int32)
    regions = regionprops(labels)
    xy = np.array([r.centroid[::-1] for r in regions], dtype=np.float64).reshape(-1, 2)
    area = np.array([r.area for r in regions], dtype=np.float64) * mpp**2
    inside = mask[np.clip(np.round(xy[:, 1]).astype(int), 0, mask.shape[0] - 1),
                  np.clip(np.round(xy[:, 0]).astype(int), 0, mask.shape[1] - 1)] if len(xy) else np.zeros(0, bool)
    return Candidates(xy[inside], area[inside])


def patches_at(rgb: np.ndarray, xy_px: np.ndarray, patch_px: int) -> np.ndarray:
    """(N, patch_px, patch_px, 3) fields of ``rgb`` centred on the points ``xy_px`` (edges reflected)."""
    half = patch_px // 2
    padded = np.pad(rgb, ((half, half), (half, half), (0, 0)), mode="reflect")
    centres = np.round(xy_px).astype(int)
    return np.stack([padded[y:y + patch_px, x:x + patch_px] for x, y in centres]) if len(centres) else \
        np.zeros((0, patch_px, patch_px, 3), np.uint8)


def merge_close(xy_um: np.ndarray, score: np.ndarray, within_um: float = SAME_NUCLEUS_UM) -> np.ndarray:
    """Indices kept when points closer than ``within_um`` are one: the highest ``score`` first, then every point
    farther than ``within_um`` from all kept ones."""
    kept: list[int] = []
    for i in np.argsort(-score, kind="stable"):
        if not kept or np.hypot(*(xy_um[kept] - xy_um[i]).T).min() > within_um:
            kept.append(int(i))
    return np.array(sorted(kept), dtype=int)


def tumour_nuclei(rgb: np.ndarray, mpp: float, mask: np.ndarray | None = None,
                  model_dir: str | Path | None = None) -> TumourNuclei:
    """The tumour nuclei of a raw H&E image (optionally only those centred in ``mask``, e.g. a deposit's outline
    rasterised); see the module docstring."""
    from micromets.model import Detector

    rgb, mask = _check(rgb, mpp, mask)
    classifier = Detector.load(model_dir or nuclei_model_dir(), threads=1)
    scale = mpp / classifier.input_mpp
    small = resample(rgb, mpp, classifier.input_mpp)
    small_mask = resample(mask.astype(np.uint8) * 255, mpp, classifier.input_mpp) > 127
    classifier.set_stain_reference(small)
    cands = nucleus_candidates(classifier.normalise(small), classifier.input_mpp, small_mask)
    if len(cands.xy_px) == 0:
        return TumourNuclei(np.zeros((0, 2)), 0)
    p = classifier.predict(patches_at(small, cands.xy_px, classifier.patch_px))
    tumour = np.flatnonzero(p >= float(classifier.card.get("threshold", 0.5)))
    kept = tumour[merge_close(cands.xy_px[tumour] * classifier.input_mpp, p[tumour])] if len(tumour) else tumour
    return TumourNuclei((cands.xy_px[kept] + 0.5) / scale - 0.5, len(cands.xy_px))


def count_tumour_nuclei(rgb: np.ndarray, mpp: float, mask: np.ndarray | None = None,
                        model_dir: str | Path | None = None) -> int:
    """Number of tumour nuclei in a raw H&E image (optionally only in ``mask``); see :func:`tumour_nuclei`."""
    return len(tumour_nuclei(rgb, mpp, mask, model_dir))


def model_card(model_dir: str | Path | None = None) -> dict:
    """The nucleus classifier's card (name, version, training data, measured error)."""
    return json.loads((Path(model_dir or nuclei_model_dir()) / "model.json").read_text())
