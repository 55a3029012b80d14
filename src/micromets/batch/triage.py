"""Triage of a batch: a worklist sorted by suspicion, and the safe-negative threshold on a labelled set.

A slide's suspicion score is its maximum heatmap tumour probability (``max_probability`` in the results store,
the maximum of ``heatmap.npy``), so a slide whose every cell stays below the lesion threshold is still ranked.

Safe-negative threshold (`safe_negative_threshold`): on a validation set with known labels, the highest score
threshold ``t`` at which the share of positive slides with ``score >= t`` is at least the target sensitivity.
Boundary convention: a slide with ``score >= t`` is flagged for review, a slide with ``score < t`` is "spared" (a
tie with ``t`` is flagged). With target 1.0, ``t`` is the lowest score of any positive slide: every positive of the
validation set is flagged and the slides below it would be spared. The threshold only transfers to new slides of
the same population, scanner and model; the report says how many positives it rests on.
"""

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from micromets.errors import MicrometsError

NEGATIVE_LABELS = ("negative", "normal", "0", "false", "no")
POSITIVE_LABELS = ("itc", "micro", "macro", "tumor", "tumour", "positive", "1", "true", "yes")


@dataclass(frozen=True)
class SafeNegativeThreshold:
    """Result of `safe_negative_threshold` (counts over the labelled slides that have a score)."""

    threshold: float  # flag score >= threshold, spare score < threshold
    target_sensitivity: float
    sensitivity: float  # achieved on the validation set
    specificity: float  # share of negatives spared
    n_positive: int
    n_negative: int
    n_spared: int
    spared_share: float  # share of all labelled slides spared (score < threshold)


def safe_negative_threshold(scores: np.ndarray, positive: np.ndarray,
                            target_sensitivity: float = 1.0) -> SafeNegativeThreshold:
    """Highest threshold keeping sensitivity >= `target_sensitivity` (see the module docstring).

    `scores` are per-slide suspicion scores (any real numbers, typically probabilities in [0, 1]), `positive`
    the boolean labels. Raises `MicrometsError` without positives, with non-finite scores or a target outside
    (0, 1].
    """
    scores = np.asarray(scores, dtype=float)
    positive = np.asarray(positive, dtype=bool)
    if scores.shape != positive.shape or scores.ndim != 1:
        raise MicrometsError(f"scores {scores.shape} and labels {positive.shape} must be two equal-length lists")
    if not 0.0 < target_sensitivity <= 1.0:
        raise MicrometsError(f"target sensitivity {target_sensitivity} must be in (0, 1]")
    if not np.isfinite(scores).all():
        raise MicrometsError("scores must be finite numbers")
    n_pos = int(positive.sum())
    if n_pos == 0:
        raise MicrometsError("the labelled set has no positive slide: no sensitivity to keep")
    needed = math.ceil(target_sensitivity * n_pos - 1e-9)  # positives that must score >= threshold
    threshold = float(np.sort(scores[positive])[::-1][needed - 1])
    flagged = scores >= threshold
    n_neg = int((~positive).sum())
    spared = ~flagged
    return SafeNegativeThreshold(
        threshold=threshold, target_sensitivity=float(target_sensitivity),
        sensitivity=float(flagged[positive].mean()),
        specificity=float(spared[~positive].mean()) if n_neg else float("nan"),
        n_positive=n_pos, n_negative=n_neg, n_spared=int(spared.sum()), spared_share=float(spared.mean()))


def read_labels(path: str | Path, positive: tuple[str, ...] = POSITIVE_LABELS) -> dict[str, bool]:
    """Slide labels from a CSV whose first column names the slide (file name or id; the extension is dropped)
    and whose second column is the label: one of `positive` (default itc/micro/macro/tumour/1 …) or
    `NEGATIVE_LABELS` (a known positive label left out of `positive`, e.g. ``itc``, counts as negative). Patient rows of a CAMELYON17 reference file (label ``pN…``) are ignored; any other label,
    a short row or a slide listed twice raises `MicrometsError` naming the line."""
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            rows = list(csv.reader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise MicrometsError(f"{path}: cannot read labels ({err})") from None
    labels: dict[str, bool] = {}
    for i, row in enumerate(rows, start=1):
        if not row or (i == 1 and row[-1].strip().lower() in ("label", "stage", "class", "node_class")):
            continue
        if len(row) < 2:
            raise MicrometsError(f"{path}:{i}: expected slide,label")
        slide, label = Path(row[0].strip()).stem, row[1].strip().lower()
        if label.startswith("pn"):
            continue
        if label in positive:
            value = True
        elif label in NEGATIVE_LABELS or label in POSITIVE_LABELS:
            value = False
        else:
            raise MicrometsError(f"{path}:{i}: label {row[1]!r} is neither positive ({', '.join(positive)}) "
                                 f"nor negative ({', '.join(NEGATIVE_LABELS)})")
        if slide in labels:
            raise MicrometsError(f"{path}:{i}: slide {slide} labelled twice")
        labels[slide] = value
    if not labels:
        raise MicrometsError(f"{path}: no slide labels")
    return labels


def select_slides(rows: list[dict], classes: tuple[str, ...] = (), min_probability: float | None = None,
                  status: str | None = None) -> list[dict]:
    """Slide rows (as `SqliteStore.slides` gives them, most suspicious first) filtered by node class (any of
    `classes`), maximum probability (``>= min_probability``) and status."""
    return [r for r in rows
            if (not classes or r["node_class"] in classes)
            and (min_probability is None or (r["max_probability"] is not None
                                             and r["max_probability"] >= min_probability))
            and (status is None or r["status"] == status)]
