"""The bundled demo case end to end (real slides, real model): what the pipeline must get right on it.

Truth (demo/README.md): node 1 negative, node 2 one micrometastasis of 0.90 mm, node 3 one ITC cluster of 0.15 mm;
pN1mi. The shipped detector also calls small false deposits in the normal tissue of these phantoms (their tiles
are among its training tiles; see docs/model.md), so node 1 is not asserted negative here: that gap is the
detector's, tracked in its issue. Everything that does not depend on that is pinned.
"""

import json
from pathlib import Path

import jsonschema
import shapely

from micromets.annotations import read_asap_xml

REPO = Path(__file__).resolve().parents[1]
SCHEMAS = REPO / "src" / "micromets" / "schemas"


def _case(demo_output):
    case = json.loads((demo_output / "demo_patient" / "case.json").read_text())
    jsonschema.validate(case, json.loads((SCHEMAS / "case.schema.json").read_text()))
    return case


def _truth_hit(demo_output, node: str) -> dict:
    """The detected lesion that overlaps the ground-truth outline of ``node``'s slide."""
    result = json.loads((demo_output / "demo_patient" / node / "result.json").read_text())
    truth = shapely.union_all(read_asap_xml(REPO / "demo" / "slides" / f"{node}.xml").geometries_l0())
    hits = [les for les in result["lesions"]
            if shapely.MultiPolygon([shapely.Polygon(r) for r in les["l0_outline"]]).intersects(truth)]
    assert len(hits) == 1, hits
    return hits[0]


def test_demo_stage_and_the_true_deposits(demo_output):
    case = _case(demo_output)
    assert case["pn_stage"] == "pN1mi" and case["complete"]
    classes = {n["node"]: n["node_class"] for n in case["nodes"]}
    assert classes["2"] == "micro"
    micro = _truth_hit(demo_output, "node2")
    assert abs(micro["diameter_mm"] - 0.90) < 0.1 and micro["class"] == "micro"
    itc = _truth_hit(demo_output, "node3")
    assert abs(itc["diameter_mm"] - 0.15) < 0.05 and itc["class"] == "itc"


def test_demo_command_runs_and_reports_where_the_report_is(tmp_path):
    import os
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "micromets", "demo", "--out", str(tmp_path / "demo-out")],
                          cwd=REPO, capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, PYTHONPATH=str(REPO / "src")))
    assert done.returncode == 0, done.stderr
    assert "demo: expected pN1mi" in done.stdout
    report = tmp_path / "demo-out" / "demo_patient" / "report.html"
    assert f"demo: report at {report}" in done.stdout and report.is_file()
