"""CAMELYON17 evaluation: quadratic-weighted Cohen's kappa of patient pN stages, and the CSV formats.

Source: CAMELYON17 "Evaluation" page (https://camelyon17.grand-challenge.org/Evaluation/) and Bándi P et al.,
IEEE Trans Med Imaging 2019;38:550-560: the submission is a CSV ``patient,stage`` with one ``patient_NNN.zip``
row per patient (its pN stage) and one ``patient_NNN_node_K.tif`` row per node (its class); the score is Cohen's
kappa with quadratic weights over the five ordered stages pN0 < pN0(i+) < pN1mi < pN1 < pN2, computed on the
patient rows.
"""

from __future__ import annotations

import csv
import re
from collections import OrderedDict
from pathlib import Path

import numpy as np

from micromets.errors import MicrometsError
from micromets.rules import NODE_CLASSES
from micromets.rules.camelyon17 import STAGES

PATIENT_ROW = re.compile(r"^(patient_\d+)\.zip$")
NODE_ROW = re.compile(r"^(patient_\d+)_node_(\d+)\.tif$")


def read_stage_csv(path: str | Path) -> tuple[dict[str, str], dict[str, dict[str, str]]]:
    """Read a CAMELYON17 CSV (``stage_labels.csv`` or a submission): (patient → stage, patient → {node file → class}).

    Patient rows and node rows are both optional; unknown stages/classes, unrecognised names and a name given on
    two lines (which line would win?) raise. A UTF-8 byte-order mark is allowed.
    """
    path = Path(path)
    patients: dict[str, str] = OrderedDict()
    nodes: dict[str, dict[str, str]] = OrderedDict()
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            rows = list(csv.reader(handle))
    except (OSError, UnicodeDecodeError) as err:
        raise MicrometsError(f"{path}: cannot read: {err}") from None
    first_line: dict[str, int] = {}
    for line, row in enumerate(rows, start=1):
        if not row or not "".join(row).strip():
            continue
        if line == 1 and row[0].strip().lower() == "patient":
            continue
        if len(row) < 2:
            raise MicrometsError(f"{path}:{line}: expected 'name,label', got {','.join(row)!r}")
        name, label = row[0].strip(), row[1].strip()
        if name in first_line:
            raise MicrometsError(f"{path}:{line}: {name} is listed twice (lines {first_line[name]} and {line})")
        first_line[name] = line
        if match := PATIENT_ROW.match(name):
            if label not in STAGES:
                raise MicrometsError(f"{path}:{line}: unknown pN stage {label!r} (expected {', '.join(STAGES)})")
            patients[match.group(1)] = label
        elif match := NODE_ROW.match(name):
            if label not in NODE_CLASSES:
                raise MicrometsError(f"{path}:{line}: unknown node class {label!r} for {name}")
            nodes.setdefault(match.group(1), OrderedDict())[name] = label
        else:
            raise MicrometsError(f"{path}:{line}: {name!r} is neither patient_NNN.zip nor patient_NNN_node_K.tif")
    return patients, nodes


def write_submission(path: str | Path, stages: dict[str, str], nodes: dict[str, dict[str, str]]) -> None:
    """Write the official submission format: header ``patient,stage``, each patient row then its node rows."""
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["patient", "stage"])
        for patient, stage in stages.items():
            writer.writerow([f"{patient}.zip", stage])
            for node_file, node_class in nodes.get(patient, {}).items():
                writer.writerow([node_file, node_class])


def quadratic_kappa(reference: list[str], predicted: list[str], labels=STAGES) -> float:
    """Cohen's kappa with quadratic weights over the ordered ``labels`` (1.0 also when both are one constant)."""
    from sklearn.metrics import cohen_kappa_score

    if len(reference) != len(predicted) or not reference:
        raise MicrometsError("kappa needs two non-empty label lists of equal length")
    if list(reference) == list(predicted):
        return 1.0
    return float(cohen_kappa_score(reference, predicted, labels=list(labels), weights="quadratic"))


def evaluate_camelyon17(submission_csv: str | Path, reference_csv: str | Path) -> dict:
    """Kappa of the submission's patient stages against the reference (every reference patient must be present).

    Returns ``{"kappa", "n_patients", "patient_accuracy", "n_nodes", "node_accuracy", "confusion", "labels"}``;
    node accuracy is over the reference nodes present in the submission (None when there are none).
    """
    ref_stages, ref_nodes = read_stage_csv(reference_csv)
    sub_stages, sub_nodes = read_stage_csv(submission_csv)
    if not ref_stages:
        raise MicrometsError(f"{reference_csv}: no patient rows (patient_NNN.zip) to evaluate")
    missing = [p for p in ref_stages if p not in sub_stages]
    if missing:
        raise MicrometsError(f"{submission_csv}: no stage for {len(missing)} reference patient(s), e.g. {missing[0]}.zip")
    reference = list(ref_stages.values())
    predicted = [sub_stages[p] for p in ref_stages]
    confusion = np.zeros((len(STAGES), len(STAGES)), dtype=int)
    for r, p in zip(reference, predicted):
        confusion[STAGES.index(r), STAGES.index(p)] += 1
    node_pairs = [
        (cls, sub_nodes[patient][name])
        for patient, files in ref_nodes.items()
        for name, cls in files.items()
        if name in sub_nodes.get(patient, {})
    ]
    return {
        "kappa": quadratic_kappa(reference, predicted),
        "n_patients": len(reference),
        "patient_accuracy": float(np.mean([r == p for r, p in zip(reference, predicted)])),
        "n_nodes": len(node_pairs),
        "node_accuracy": float(np.mean([r == p for r, p in node_pairs])) if node_pairs else None,
        "confusion": confusion.tolist(),
        "labels": list(STAGES),
    }
