"""Out-of-distribution warning: is this H&E slide lymph node, stained like what the detector saw?

The detector was trained on sentinel lymph nodes (CAMELYON16) and its numbers (heatmap, thresholds, held-out
results) hold for lymph-node tissue stained within the range it was tested on. Two plain checks, computed from the
stain sample the analysis reads anyway (:func:`micromets.analyze.stain_sample`: the 32 most haematoxylin-rich of
128 tissue patches, 96 px at 0.5 µm/px), say when they may not hold. Neither changes any finding; they add a
warning to the slide's result (``result.json`` ``ood``), the case and the report.

(a) Stain: the larger of the two angles (degrees) between the slide's Macenko haematoxylin and eosin vectors
    (:func:`micromets.normalise.macenko_stain_matrix` of the sample) and the model card's
    ``stain_normalisation.target`` vectors. Flagged above :data:`STAIN_ANGLE_MAX_DEG`.
(b) Tissue: the share of the sample's patches that look like lymph node: densely packed haematoxylin nuclei,
    counted as local maxima of the haematoxylin amount (smoothed over 1 µm, at least 3 µm apart, at least
    0.35 OD) after the patch is mapped onto the reference stain basis, so that the count does not depend on the
    lab's stain. A patch looks like lymph node with at least :data:`LYMPH_NUCLEI_PER_MM2` nuclei per mm² (lymphocytes,
    about 7 µm across, packed side by side). Flagged when the share is below :data:`LYMPH_SHARE_MIN`.

Measured on ``../shared/data`` (2026-12-06 with this module's functions; each slide through
:func:`micromets.analyze.stain_sample`, each set of tiles sampled the same way: the 32 most haematoxylin-rich of
its 96-px tissue patches at 0.5 µm/px; nuclei per mm² is the median over those patches):

=================================================  ==========  =============  ==========
source                                             angle °     nuclei/mm²     LN share
=================================================  ==========  =============  ==========
CAMELYON16 normal lymph-node patches (pooled)      1.5         14 974         1.00
CAMELYON17 tiles, centres 0 … 4 (lymph node)       4.5-15.8    13 455-19 097  0.54-1.00
demo phantoms node1 / node2 / node3                3.7-5.4     13 455-13 889  0.66-0.81
CMU-1-Small-Region.svs (skin, OpenSlide test)      16.9        9 766          0.16
BACH A03 breast: in situ / invasive / normal       13.3-14.5   434-10 851     0.00-0.28
Kather 2016 colorectal tumour/stroma/complex/muc.  4.6-8.5     5 208-10 851   0.00-0.33
NCT-CRC-HE-100K normal mucosa / stroma / tumour    4.7-8.0     4 991-9 115    0.00
CAMELYON16 tumour patches (carcinoma in node)      4.2         3 906          0.04
Kather 2016 and NCT lymphocyte tiles               10.1-13.3   18 229-20 399  1.00
=================================================  ==========  =============  ==========

The share cut (0.45) lies between the lowest lymph node (0.54, CAMELYON17 centre 4, a node with a macrometastasis;
the demo phantoms 0.66) and the highest other tissue (0.33, Kather colorectal tumour; the skin slide 0.16). The
stain cut (20°) lies above the widest centre the detector handles (15.8°, CAMELYON17 centres 2 and 4); no real
H&E in the shared data exceeds it (skin 16.9°, BACH 14.5°), so it catches stains further off than any centre
measured, e.g. the CAMELYON17 centre-0 tile (3.9°) re-stained with its vectors turned 25° about the red axis
(22.0°; turned 20°: 17.7°, not flagged; tests/test_ood.py). Cost: 0.2 s per slide.

Known limits: lymphoid tissue elsewhere (colorectal lymphocyte aggregates, tonsil) looks like lymph node; a node
almost entirely replaced by carcinoma (CAMELYON16 tumour patches: 3 906 nuclei/mm², share 0.04) is flagged as
possibly not lymph node, which is a warning to look, not a finding.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi
from skimage.feature import peak_local_max

from micromets import normalise

#: Above this angle (degrees) between the slide's and the model's stain vectors the stain is far from what the
#: detector was measured on (see the module's table).
STAIN_ANGLE_MAX_DEG = 20.0
#: A patch with at least this many haematoxylin nuclei per mm² looks like lymph node.
LYMPH_NUCLEI_PER_MM2 = 12_000.0
#: Below this share of lymph-node-like patches the slide may not be lymph node.
LYMPH_SHARE_MIN = 0.45
#: Nucleus detection: smoothing (µm), least distance between two nuclei (µm), least haematoxylin OD at a nucleus.
SMOOTH_UM = 1.0
NUCLEUS_SPACING_UM = 3.0
NUCLEUS_MIN_OD = 0.35

WARNING = "this slide may not be lymph node: the detector's numbers do not apply"


def stain_angle_deg(source_he: np.ndarray, target_he: np.ndarray) -> float:
    """The larger of the haematoxylin and eosin angles (degrees) between two (2, 3) stain-vector sets."""
    src = np.asarray(source_he, np.float64)
    dst = np.asarray(target_he, np.float64)
    src = src / np.linalg.norm(src, axis=1, keepdims=True)
    dst = dst / np.linalg.norm(dst, axis=1, keepdims=True)
    return float(np.degrees(np.arccos(np.clip((src * dst).sum(axis=1), -1.0, 1.0))).max())


def nuclei_per_mm2(patches_rgb: np.ndarray, mpp: float, source_he: np.ndarray, target_he: np.ndarray) -> np.ndarray:
    """Haematoxylin nuclei per mm² of each uint8 RGB patch (N, P, P, 3) at ``mpp`` µm/px, after mapping the
    patches from their stain basis ``source_he`` onto ``target_he`` (see the module docstring)."""
    from micromets.stain import dye_amount

    mapped = normalise.apply_stain_transform(patches_rgb, normalise.stain_transform(source_he, target_he))
    haematoxylin = dye_amount(mapped, normalise.complete_basis(target_he), 0)
    area_mm2 = patches_rgb.shape[1] * patches_rgb.shape[2] * (mpp / 1000.0) ** 2
    spacing_px = max(1, round(NUCLEUS_SPACING_UM / mpp))
    counts = [len(peak_local_max(ndi.gaussian_filter(h, SMOOTH_UM / mpp), min_distance=spacing_px,
                                 threshold_abs=NUCLEUS_MIN_OD, exclude_border=False)) for h in haematoxylin]
    return np.asarray(counts, np.float64) / area_mm2


def ood_checks(sample_rgb: np.ndarray, sample_mpp: float, target_he: np.ndarray) -> dict:
    """Both checks on a slide's stain sample (N, P, P, 3) at ``sample_mpp``: ``{"stain": {...}, "tissue": {...},
    "flagged": bool}``, each check with its value, threshold, ``flagged`` and ``reason`` in words."""
    source_he = normalise.macenko_stain_matrix(sample_rgb)
    angle = stain_angle_deg(source_he, target_he)
    density = nuclei_per_mm2(sample_rgb, sample_mpp, source_he, target_he)
    share = float((density >= LYMPH_NUCLEI_PER_MM2).mean()) if len(density) else 0.0
    stain_flag = angle > STAIN_ANGLE_MAX_DEG
    tissue_flag = share < LYMPH_SHARE_MIN
    stain = {
        "value_deg": round(angle, 2), "threshold_deg": STAIN_ANGLE_MAX_DEG, "flagged": stain_flag,
        "reason": (f"stain vectors {angle:.1f}° from the model's reference (more than {STAIN_ANGLE_MAX_DEG:g}°): "
                   "a stain further off than any centre the detector was measured on" if stain_flag else
                   f"stain vectors {angle:.1f}° from the model's reference (at most {STAIN_ANGLE_MAX_DEG:g}°)"),
    }
    tissue = {
        "value_share": round(share, 3), "threshold_share": LYMPH_SHARE_MIN, "flagged": tissue_flag,
        "median_nuclei_per_mm2": round(float(np.median(density)), 0) if len(density) else 0.0,
        "reason": (f"{share:.0%} of the sampled tissue has the densely packed small nuclei of lymph node "
                   f"(at least {LYMPH_NUCLEI_PER_MM2:,.0f} per mm²), less than the {LYMPH_SHARE_MIN:.0%} every lymph node "
                   "measured had" if tissue_flag else
                   f"{share:.0%} of the sampled tissue has the densely packed small nuclei of lymph node"),
    }
    return {"stain": stain, "tissue": tissue, "flagged": stain_flag or tissue_flag}
