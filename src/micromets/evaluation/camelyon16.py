"""CAMELYON16 evaluation: lesion-level FROC and slide-level AUC, with the challenge's semantics.

Source: Ehteshami Bejnordi B et al., "Diagnostic assessment of deep learning algorithms for detection of lymph node
metastases in women with breast cancer", JAMA 2017;318:2199-2210, and the challenge's evaluation script
(``Evaluation_FROC.py``, CAMELYON16 organisers). Re-implemented here (no code copied):

* Reference ("evaluation") mask at level 5 (downsample 32; 7.776 µm/px for 0.243 µm/px scans): the tumour
  outlines rasterised (exclusion regions cut out), every pixel closer than 75 µm / 2 to tumour added
  (Euclidean distance transform, strict ``<``), holes filled, 8-connected components = lesions. Deposits less
  than 75 µm (about 5 tumour cells) apart are therefore one lesion. The outlines are rasterised directly at
  level 5 (a pixel is tumour when its centre is inside), where the challenge read level 5 of a level-0 mask
  pyramid: lesion borders can differ by one level-5 pixel (7.8 µm).
* ITC lesions: fitted-ellipse major axis (``regionprops.major_axis_length``) ``< 275 µm`` (200 µm plus the
  dilation). A detection inside an ITC lesion is neither a hit nor a false positive; ITC lesions are not counted
  in the sensitivity.
* A detection ``(probability, x, y)`` (level-0 px) hits the lesion whose label is at mask pixel
  ``(int(y / 32), int(x / 32))``; label 0 (or outside the mask) is a false positive; on a slide without tumour
  every detection is a false positive. One true positive per lesion: its highest probability.
* FROC: for every threshold t among the detection probabilities, sensitivity = lesions with a hit ``>= t`` /
  all non-ITC lesions, FP rate = false positives ``>= t`` / number of slides; the curve ends at (0, 0). The score
  is the mean sensitivity at 1/4, 1/2, 1, 2, 4 and 8 FP per slide, linearly interpolated on the curve and held
  constant beyond its ends (``numpy.interp``), as in the challenge.

  One deliberate difference: the challenge script drops the lowest distinct probability as a threshold (it is
  normally the 0 of missed lesions); when no lesion is missed that drops a real detection, so a perfect
  detector could score below 1. Here every detection probability > 0 is a threshold; results are otherwise the
  same.
* Slide AUC: slide score = the highest detection probability on the slide (0 without detections), truth = the
  reference has tumour; ROC AUC (``sklearn.metrics.roc_auc_score``).
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from micromets.errors import MicrometsError

#: CAMELYON16 level-0 resolution (µm/px) used by the challenge.
CAMELYON16_L0_MPP = 0.243
#: The evaluation mask's pyramid level (downsample 2**5 = 32).
EVALUATION_LEVEL = 5
#: Reference outlines are dilated by half of this (µm): deposits closer than 75 µm form one lesion.
MERGE_DISTANCE_UM = 75.0
#: Lesions whose fitted-ellipse major axis is below this (µm) are ITC (200 µm + the 75 µm dilation).
ITC_MAJOR_AXIS_UM = 275.0
#: FP-per-slide rates at which the FROC sensitivity is averaged.
FP_RATES = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0)


@dataclass
class EvaluationMask:
    """Labelled reference lesions of one slide at the evaluation level.

    ``labels[r, c]`` is evaluation-level pixel ``(row0 + r, col0 + c)`` of the slide: the array covers only the
    window around the lesions, aligned to the level's pixel grid.
    """

    labels: np.ndarray  # int32 (rows, cols), 0 = no tumour
    itc_labels: frozenset[int]
    downsample: int
    row0: int = 0
    col0: int = 0

    @property
    def n_lesions(self) -> int:
        """Lesions that count for sensitivity (non-ITC)."""
        return int(self.labels.max()) - len(self.itc_labels)


#: Reference outlines must lie within a glass slide (75 × 25 mm; 80 mm either way leaves room): a coordinate
#: beyond it is a broken file, and its mask (the lesions' bounding box at level 5) would ask for tens of GiB.
MAX_SLIDE_MM = 80.0


def evaluation_mask(geoms_l0, l0_mpp: float = CAMELYON16_L0_MPP, level: int = EVALUATION_LEVEL) -> EvaluationMask:
    """Build the CAMELYON16 evaluation mask from tumour outlines (level-0 px, exclusions already cut out).

    Raises :class:`MicrometsError` when an outline reaches beyond ``±MAX_SLIDE_MM`` of the slide's origin."""
    import shapely
    from skimage.measure import label, regionprops

    from micromets.measure import rasterize_l0

    downsample = 2**level
    mask_mpp = l0_mpp * downsample
    geoms = [g for g in geoms_l0 if not g.is_empty]
    if not geoms:
        return EvaluationMask(np.zeros((1, 1), dtype=np.int32), frozenset(), downsample)
    minx, miny, maxx, maxy = shapely.total_bounds(np.array(geoms, dtype=object))
    limit_l0 = MAX_SLIDE_MM * 1000 / l0_mpp
    if not all(math.isfinite(v) and abs(v) <= limit_l0 for v in (minx, miny, maxx, maxy)):
        raise MicrometsError(f"reference outline coordinates ({minx:g}, {miny:g}) to ({maxx:g}, {maxy:g}) level-0 px "
                             f"reach beyond a slide: at {l0_mpp:g} µm/px a slide spans at most {limit_l0:.0f} px "
                             f"({MAX_SLIDE_MM:g} mm)")
    margin = int(math.ceil(MERGE_DISTANCE_UM / mask_mpp)) + 2
    row0, col0 = max(0, int(miny // downsample) - margin), max(0, int(minx // downsample) - margin)
    shape = (int(maxy // downsample) + margin - row0, int(maxx // downsample) + margin - col0)
    tumour = rasterize_l0(geoms, shape, mask_mpp, l0_mpp, (col0 * downsample, row0 * downsample))
    if not tumour.any():
        return EvaluationMask(np.zeros((1, 1), dtype=np.int32), frozenset(), downsample)
    near = ndi.distance_transform_edt(~tumour) < MERGE_DISTANCE_UM / (mask_mpp * 2)
    labels = label(ndi.binary_fill_holes(near), connectivity=2).astype(np.int32)
    itc = frozenset(
        region.label for region in regionprops(labels) if region.axis_major_length * mask_mpp < ITC_MAJOR_AXIS_UM
    )
    return EvaluationMask(labels, itc, downsample, row0, col0)


def score_detections(detections: np.ndarray, reference: EvaluationMask | None) -> tuple[np.ndarray, np.ndarray]:
    """(false-positive probabilities, per non-ITC lesion the best hit probability or 0) for one slide.

    ``detections`` is (n, 3): probability, level-0 x, level-0 y. ``reference=None`` is a slide without tumour.
    """
    probs = detections[:, 0]
    if reference is None:
        return probs.copy(), np.zeros(0)
    rows = (detections[:, 2] / reference.downsample).astype(int) - reference.row0
    cols = (detections[:, 1] / reference.downsample).astype(int) - reference.col0
    h, w = reference.labels.shape
    inside = (rows >= 0) & (rows < h) & (cols >= 0) & (cols < w)
    hit = np.zeros(len(probs), dtype=np.int32)
    hit[inside] = reference.labels[rows[inside], cols[inside]]
    best = np.zeros(int(reference.labels.max()) + 1)
    np.maximum.at(best, hit[hit > 0], probs[hit > 0])
    counted = np.array(
        [i for i in range(1, len(best)) if i not in reference.itc_labels], dtype=int
    )
    return probs[hit == 0], best[counted] if counted.size else np.zeros(0)


def froc(fp_probs: np.ndarray, tp_probs: np.ndarray, n_slides: int, rates=FP_RATES) -> dict:
    """FROC curve and score from all false-positive probabilities, per-lesion best hits, and the slide count."""
    if len(tp_probs) == 0:
        raise MicrometsError("FROC needs at least one non-ITC reference lesion")
    if n_slides <= 0:
        raise MicrometsError("FROC needs at least one slide")
    thresholds = np.unique(np.concatenate([fp_probs, tp_probs]))
    thresholds = thresholds[thresholds > 0]
    fp_sorted, tp_sorted = np.sort(fp_probs), np.sort(tp_probs)
    fp_rate = (len(fp_sorted) - np.searchsorted(fp_sorted, thresholds, side="left")) / n_slides
    sensitivity = (len(tp_sorted) - np.searchsorted(tp_sorted, thresholds, side="left")) / len(tp_sorted)
    fp_rate, sensitivity = np.append(fp_rate, 0.0), np.append(sensitivity, 0.0)
    at_rates = np.interp(rates, fp_rate[::-1], sensitivity[::-1])
    return {
        "froc": float(np.mean(at_rates)),
        "sensitivity_at": {str(r): float(s) for r, s in zip(rates, at_rates)},
        "curve": {"fp_per_slide": fp_rate.tolist(), "sensitivity": sensitivity.tolist(),
                  "threshold": thresholds.tolist() + [math.inf]},
    }


def read_detections_csv(path: str | Path) -> np.ndarray:
    """Detections (n, 3) from a CSV of ``probability, x, y`` rows (level-0 px; an optional header row)."""
    path = Path(path)
    rows = []
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            for line, row in enumerate(csv.reader(handle), start=1):
                if not row or not "".join(row).strip():
                    continue
                try:
                    values = [float(v) for v in row[:3]]
                except ValueError:
                    if line == 1:
                        continue
                    raise MicrometsError(f"{path}:{line}: expected numbers 'probability,x,y', got {row!r}") from None
                if len(values) != 3 or not all(map(math.isfinite, values)):
                    raise MicrometsError(f"{path}:{line}: expected three finite numbers 'probability,x,y'")
                if not 0.0 <= values[0] <= 1.0:
                    raise MicrometsError(f"{path}:{line}: probability {values[0]} is outside [0, 1]")
                rows.append(values)
    except (OSError, UnicodeDecodeError) as err:
        raise MicrometsError(f"{path}: cannot read: {err}") from None
    return np.array(rows, dtype=float).reshape(-1, 3)


def find_reference(reference_dir: Path, slide_id: str) -> Path | None:
    """The reference outline file for ``slide_id`` (.xml, .json or .geojson, case-insensitive), or None."""
    wanted = slide_id.lower()
    for path in sorted(reference_dir.iterdir()):
        if path.stem.lower() == wanted and path.suffix.lower() in (".xml", ".json", ".geojson"):
            return path
    return None


def evaluate_camelyon16(
    detections_dir: str | Path, reference_dir: str | Path, l0_mpp: float = CAMELYON16_L0_MPP
) -> dict:
    """Evaluate one CSV of detections per slide (``<slide>.csv``) against reference outlines.

    A slide without a reference file (``<slide>.xml`` / ``.json``) or whose reference has no tumour outline is a
    normal slide. Returns the FROC score, sensitivities at the six FP rates, slide AUC and per-slide details.
    """
    from sklearn.metrics import roc_auc_score

    from micromets.annotations import read_annotations

    detections_dir, reference_dir = Path(detections_dir), Path(reference_dir)
    for folder in (detections_dir, reference_dir):
        if not folder.is_dir():
            raise MicrometsError(f"{folder}: not a folder")
    csvs = sorted(detections_dir.glob("*.csv"))
    if not csvs:
        raise MicrometsError(f"{detections_dir}: no detection CSV files (<slide>.csv)")
    fp_all, tp_all, slides = [], [], []
    for path in csvs:
        detections = read_detections_csv(path)
        ref_path = find_reference(reference_dir, path.stem)
        reference = None
        if ref_path is not None:
            geoms = read_annotations(ref_path).geometries_l0()
            try:
                reference = evaluation_mask(geoms, l0_mpp) if geoms else None
            except MicrometsError as err:
                raise MicrometsError(f"{ref_path}: {err}") from None
            if reference is not None and not reference.labels.any():
                reference = None
        fp, tp = score_detections(detections, reference)
        fp_all.append(fp)
        tp_all.append(tp)
        slides.append({
            "slide": path.stem,
            "reference": None if ref_path is None else ref_path.name,
            "tumour": reference is not None,
            "n_detections": len(detections),
            "n_lesions": 0 if reference is None else reference.n_lesions,
            "n_itc_lesions": 0 if reference is None else len(reference.itc_labels),
            "n_hit": int((tp > 0).sum()),
            "n_false_positives": len(fp),
            "score": float(detections[:, 0].max()) if len(detections) else 0.0,
        })
    result = froc(np.concatenate(fp_all), np.concatenate(tp_all), len(csvs))
    truth = [s["tumour"] for s in slides]
    result["auc"] = (
        float(roc_auc_score(truth, [s["score"] for s in slides])) if len(set(truth)) == 2 else None
    )
    result["n_slides"] = len(slides)
    result["n_lesions"] = int(sum(s["n_lesions"] for s in slides))
    result["slides"] = slides
    return result
