"""CAMELYON17: the official training labels re-staged 20/20, kappa semantics, CSV formats and bad inputs."""

import pytest

from micromets.errors import MicrometsError
from micromets.evaluation.camelyon17 import (
    evaluate_camelyon17,
    quadratic_kappa,
    read_stage_csv,
    write_submission,
)
from micromets.patient import stage_patient


def test_official_labels_restaged_20_of_20(shared_data):
    official, nodes = read_stage_csv(shared_data / "camelyon17" / "stage_labels_patients_000-019.csv")
    assert len(official) == 20 and sum(len(n) for n in nodes.values()) == 100
    ours = {patient: stage_patient(list(files.values()))[0] for patient, files in nodes.items()}
    assert ours == official
    assert len(set(official.values())) == 5  # all five stages occur in the reference


def test_quadratic_kappa_by_hand():
    # classes 0..4 = pN0 … pN2; reference (0, 3, 4), predicted (0, 4, 4): kappa = 1 - (1/48) / (59/144) = 56/59
    assert quadratic_kappa(["pN0", "pN1", "pN2"], ["pN0", "pN2", "pN2"]) == pytest.approx(56 / 59)
    assert quadratic_kappa(["pN0"] * 3, ["pN0"] * 3) == 1.0
    with pytest.raises(MicrometsError):
        quadratic_kappa(["pN0"], [])


def test_submission_round_trip_and_evaluation(tmp_path, shared_data):
    reference = shared_data / "camelyon17" / "stage_labels_patients_000-019.csv"
    stages, nodes = read_stage_csv(reference)
    sub = tmp_path / "submission.csv"
    write_submission(sub, stages, nodes)
    assert sub.read_text().splitlines()[:3] == ["patient,stage", "patient_000.zip,pN0", "patient_000_node_0.tif,negative"]
    assert read_stage_csv(sub) == (stages, nodes)
    result = evaluate_camelyon17(sub, reference)
    assert result["kappa"] == 1.0 and result["n_patients"] == 20 and result["node_accuracy"] == 1.0
    wrong = dict(stages)
    first_pn2 = next(p for p, s in stages.items() if s == "pN2")
    wrong[first_pn2] = "pN0"
    write_submission(sub, wrong, {})
    worse = evaluate_camelyon17(sub, reference)
    assert worse["kappa"] < 1.0 and worse["patient_accuracy"] == pytest.approx(19 / 20)
    assert worse["node_accuracy"] is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("patient,stage\npatient_000.zip,pN3\n", "unknown pN stage"),
        ("patient,stage\npatient_000_node_0.tif,tumour\n", "unknown node class"),
        ("patient,stage\nslide_1.tif,negative\n", "neither"),
        ("patient,stage\npatient_000.zip\n", "expected 'name,label'"),
    ],
)
def test_bad_csv(tmp_path, text, message):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(MicrometsError, match=message):
        read_stage_csv(path)


def test_missing_patient_in_submission(tmp_path, shared_data):
    sub = tmp_path / "sub.csv"
    sub.write_text("patient,stage\npatient_000.zip,pN0\n")
    with pytest.raises(MicrometsError, match="no stage for 19"):
        evaluate_camelyon17(sub, shared_data / "camelyon17" / "stage_labels_patients_000-019.csv")
