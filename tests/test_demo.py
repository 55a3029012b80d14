"""The bundled demo case end to end (real slides, real model): what the pipeline must get right on it.

Truth (demo/README.md): node 1 negative, node 2 one micrometastasis of 0.90 mm, node 3 one ITC cluster of 0.15 mm;
pN1mi. The shipped detector's heatmap still has a false cell in node 1 (a 0.05 mm outline at p 0.86, see
docs/model.md); the lesion confirmation (`micromets.analyze.confirm_outlines`) must reject it and keep both true
deposits, so the whole expected result is pinned.
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
    expected = json.loads((REPO / "demo" / "expected.json").read_text())
    assert classes == expected["nodes"] and case["pn_stage"] == expected["pn_stage"]
    micro = _truth_hit(demo_output, "node2")
    assert abs(micro["diameter_mm"] - 0.90) < 0.1 and micro["class"] == "micro"
    itc = _truth_hit(demo_output, "node3")
    assert abs(itc["diameter_mm"] - 0.15) < 0.05 and itc["class"] == "itc"
    assert min(micro["confirmed_probability"], itc["confirmed_probability"]) >= 0.5


def test_the_false_cells_of_node1_fail_the_edge_check_before_any_confirmation(demo_output, tmp_path):
    """Node 1 holds no deposit. One window per cell, the detector calls a few of its cells tumour (>= 0.5); each
    is alone or on an edge, and the mean of its 9 half-cell-shifted windows is below 0.5, so the heatmap's edge
    check (:func:`micromets.heatmap.rescore_edge_cells`) drops it: the run's heatmap has no cell >= 0.5, and
    node 1 is negative with no candidate, with the confirmation (the card's 0.73) and without it (0)."""
    import numpy as np

    from micromets.analyze import analyze_slide, lesion_thresholds, stain_sample
    from micromets.heatmap import compute_heatmap
    from micromets.model import Detector, default_model_dir
    from micromets.slide import open_slide
    from micromets.tissue import tissue_mask

    folder = demo_output / "demo_patient" / "node1"
    result = json.loads((folder / "result.json").read_text())
    card = json.loads((default_model_dir() / "model.json").read_text())
    assert result["confirm_threshold"] == lesion_thresholds(card)[2] == card["confirm_threshold"]  # 0.73, held out
    assert np.load(folder / "heatmap.npy").max() < 0.5 and result["timing_s"]["n_rescored"] >= 1
    assert result["lesions"] == [] and result["unconfirmed_lesions"] == [] and result["node_class"] == "negative"
    detector = Detector.load()
    with open_slide(REPO / "demo" / "slides" / "node1.tiff") as slide:
        tissue = tissue_mask(slide)
        detector.set_stain_reference(stain_sample(slide, tissue, detector.input_mpp, detector.patch_px))
        single, _ = compute_heatmap(slide, tissue, detector)  # one window per cell, no edge check
    assert single.h_prob.max() >= 0.5
    raw = analyze_slide(REPO / "demo" / "slides" / "node1.tiff", tmp_path, stain="he", confirm_threshold=0.0)
    assert raw["confirm_threshold"] == 0.0 and raw["node_class"] == "negative" and raw["lesions"] == []


def test_demo_command_runs_from_any_folder_and_reports_where_the_report_is(tmp_path):
    import os
    import subprocess
    import sys

    # From a folder that is not the repository: the demo case comes with the package, the output lands here.
    done = subprocess.run([sys.executable, "-m", "micromets", "demo"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, PYTHONPATH=str(REPO / "src")))
    assert done.returncode == 0, done.stderr
    assert "demo: expected pN1mi" in done.stdout and ": MATCHES" in done.stdout
    report = tmp_path / "demo-out" / "demo_patient" / "report.html"
    assert f"demo: report at {report}" in done.stdout and report.is_file()


def test_the_readme_api_example_runs_on_the_demo(capsys):
    """The README's Python API example, run as written on demo node 2, prints its confirmed micrometastasis."""
    import re

    readme = (REPO / "README.md").read_text()
    api = readme[readme.index("## Python API"):]
    code = re.search(r"```python\n(.*?)```", api, re.S).group(1)
    exec(code.replace('"node.svs"', repr(str(REPO / "demo" / "slides" / "node2.tiff"))), {})
    printed = capsys.readouterr().out
    assert re.fullmatch(r"\[\(0\.9\d, 'micro'\)\]\n", printed), printed


def test_demo_nodes_are_not_flagged_out_of_distribution(demo_output):
    """case.json carries each slide's out-of-distribution checks (micromets.ood); the demo nodes are lymph node
    in the reference stain, so none is flagged."""
    case = _case(demo_output)
    ood = {sid: entry for n in case["nodes"] for sid, entry in n["ood"].items()}
    assert sorted(ood) == ["node1", "node2", "node3"]
    assert not any(entry["flagged"] or entry["reasons"] for entry in ood.values()), ood
