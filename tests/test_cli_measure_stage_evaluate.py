"""`micromets measure`, `stage` and `evaluate` as a user runs them, on the real reference files."""

import csv
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from micromets.cli import app

runner = CliRunner()


def run(*args):
    result = runner.invoke(app, [str(a) for a in args])
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def test_measure_table(tmp_path, shared_data):
    polygons = shared_data / "camelyon16_polygons"
    out = tmp_path / "table.csv"
    result = run("measure", polygons / "Tumor_017.json", polygons / "Tumor_010.json",
                 shared_data / "camelyon17" / "patient_004_node_4.xml", "--mpp", "0.243", "--out", out)
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(out.open()))
    assert list(rows[0]) == ["slide", "n_lesions", "largest_diameter_mm", "largest_area_mm2", "node_class"]
    assert [(r["slide"], r["node_class"]) for r in rows] == [
        ("Tumor_017", "itc"), ("Tumor_010", "micro"), ("patient_004_node_4", "itc")]
    assert float(rows[0]["largest_diameter_mm"]) == pytest.approx(0.1386, abs=5e-5)
    assert "Tumor_017" in result.output


def test_stage_then_evaluate_kappa_one(tmp_path, shared_data):
    labels = shared_data / "camelyon17" / "stage_labels_patients_000-019.csv"
    submission = tmp_path / "stages.csv"
    assert run("stage", labels, "--rule", "camelyon17", "--out", submission).exit_code == 0
    official = [line for line in labels.read_text().splitlines() if line.strip()]
    assert submission.read_text().splitlines() == official  # 20/20 patients and all node rows, same order
    result = run("evaluate", "camelyon17", submission, labels)
    assert result.exit_code == 0
    assert "kappa 1.0000" in result.output


def test_stage_ajcc8_mode(tmp_path):
    nodes = tmp_path / "nodes.csv"
    nodes.write_text("patient,stage\npatient_100_node_0.tif,macro\npatient_100_node_1.tif,itc\n"
                     "patient_101_node_0.tif,itc\n")
    out = tmp_path / "ajcc.csv"
    assert run("stage", nodes, "--rule", "ajcc8", "--out", out).exit_code == 0
    lines = out.read_text().splitlines()
    assert "patient_100.zip,pN1a(sn)" in lines and "patient_101.zip,pN0(i+)(sn)" in lines


def test_evaluate_camelyon16_cli(tmp_path, shared_data):
    detections = tmp_path / "det"
    detections.mkdir()
    (detections / "Tumor_017.csv").write_text("0.9,10,10\n")  # far from the lesions: a false positive
    (detections / "Normal_001.csv").write_text("")
    result = runner.invoke(app, ["evaluate", "camelyon16", str(detections), str(shared_data / "camelyon16_polygons")])
    # Tumor_017 holds only ITC lesions: no lesion counts, so FROC is undefined and refused clearly
    assert isinstance(result.exception, Exception) and "non-ITC" in str(result.exception)
    (detections / "Tumor_010.csv").write_text("probability,x,y\n")
    out = tmp_path / "froc.json"
    result = run("evaluate", "camelyon16", detections, shared_data / "camelyon16_polygons", "--out", out)
    assert result.exit_code == 0 and "FROC 0.0000" in result.output and out.exists()


def test_bad_input_is_one_line_and_exit_2_but_keeps_results(tmp_path, shared_data):
    bad = tmp_path / "broken.xml"
    bad.write_text("<ASAP_Annotations><Annotations>")
    out = tmp_path / "table.csv"
    proc = subprocess.run(
        [sys.executable, "-m", "micromets", "measure", str(bad),
         str(shared_data / "camelyon17" / "patient_004_node_4.xml"), "--mpp", "0.243", "--out", str(out)],
        capture_output=True, text=True,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"micromets: error: {bad}: malformed XML: no element found: line 1, column 31"]
    assert "patient_004_node_4" in out.read_text()
    nodes = tmp_path / "nodes.csv"
    nodes.write_text("patient_000_node_0.tif,tumour\n")
    proc = subprocess.run([sys.executable, "-m", "micromets", "stage", str(nodes)], capture_output=True, text=True)
    assert proc.returncode == 2 and "unknown node class 'tumour'" in proc.stderr and len(proc.stderr.splitlines()) == 1
