"""Sizes printed for people never hide a class boundary, and a node without a deposit has no size: the one
formatting function, then the places that print sizes (report, CLI, viewer API) on a real demo case whose deposit
was set next to the 0.2 mm boundary."""

import json
import re
import shutil

import pytest

from micromets.sizes import format_mm


@pytest.mark.parametrize("mm, text", [
    (None, "—"), (0.0524, "0.052 mm"), (0.1553, "0.16 mm"), (0.9067, "0.91 mm"), (12.345, "12.35 mm"),
    (0.2, "0.20 mm"), (2.0, "2.00 mm"),                      # exactly on a boundary: printed as the boundary
    (0.2003, "0.2003 mm"), (0.2049, "0.205 mm"), (2.004, "2.004 mm"), (2.0004, "2.0004 mm"),  # just above
    (0.1996, "0.1996 mm"), (1.996, "1.996 mm"),               # just below
    (0.20003, "> 0.20 mm"), (2.00001, "> 2.00 mm"), (0.19999, "< 0.20 mm"),  # closer than 4 decimals tell
])
def test_format_mm_never_rounds_onto_a_boundary(mm, text):
    assert format_mm(mm) == text


def test_format_mm_without_unit():
    assert format_mm(0.2003, unit=False) == "0.2003"
    assert format_mm(None, unit=False) == "—"


@pytest.mark.parametrize("mm", [0.2 + k * 1e-5 for k in range(-30, 31)] + [2.0 + k * 1e-5 for k in range(-30, 31)])
def test_printed_size_reads_on_the_true_side_of_each_boundary(mm):
    text = format_mm(mm, unit=False)
    if text[0] in "<>":
        return
    for boundary in (0.2, 2.0):
        assert (float(text) > boundary) == (mm > boundary) and (float(text) < boundary) == (mm < boundary)


@pytest.fixture
def boundary_case(demo_output, tmp_path):
    """The demo patient with node 3's deposit measured 0.2003 mm (a micrometastasis by AJCC 8), re-staged."""
    from micromets.case import stage_case

    patient_dir = tmp_path / "demo_patient"
    shutil.copytree(next(demo_output.glob("*/case.json")).parent, patient_dir)
    results = {}
    for sid in ("node1", "node2", "node3"):
        results[sid] = json.loads((patient_dir / sid / "result.json").read_text())
    node3 = results["node3"]
    node3["lesions"][0].update(diameter_mm=0.2003, **{"class": "micro"})
    node3.update(largest_deposit_mm=0.2003, node_class="micro")
    (patient_dir / "node3" / "result.json").write_text(json.dumps(node3))
    case = stage_case("demo_patient", [(str(i), [results[f"node{i}"]], None) for i in (1, 2, 3)], [])
    (patient_dir / "case.json").write_text(json.dumps(case))
    return patient_dir, case


def test_negative_node_has_no_size_in_case_json(demo_output):
    case = json.loads(next(demo_output.glob("*/case.json")).read_text())
    node1 = next(n for n in case["nodes"] if n["node"] == "1")
    assert node1["node_class"] == "negative" and node1["largest_deposit_mm"] is None


def test_report_prints_boundary_sizes_and_dashes_for_negative(boundary_case):
    from micromets.report import render_report_html

    patient_dir, case = boundary_case
    html = render_report_html(patient_dir)
    assert "0.2003 mm" in html and ">0.2003<" in html  # node text and the lesion table
    assert "0.20 mm" not in html and "0.200<" not in html
    assert "0.00 mm" not in html and "0.000 mm" not in html
    summary = re.search(r'<table id="node-summary">(.*?)</table>', html, re.S).group(1)
    row1 = re.search(r"<tr>\s*<td>1</td>(.*?)</tr>", summary, re.S).group(1)
    assert re.findall(r'<td class="num">(.*?)</td>', row1)[0] == "—"


def test_case_reason_and_viewer_api_use_the_same_digits(boundary_case):
    from micromets.viewer.catalog import build_catalog, lesions_geojson, slide_summary

    patient_dir, case = boundary_case
    from micromets.patient import stage_patient

    assert "largest deposit 0.2003 mm in node 3" in stage_patient([n for n in case["nodes"] if n["node"] == "3"])[1]
    catalog = build_catalog(patient_dir)
    entry = next(e for e in catalog.slides.values() if e.result["slide_id"] == "node3")
    summary = slide_summary(entry, None)
    assert summary["largest_deposit_text"] == "0.2003 mm"
    assert summary["lesions"][0]["diameter_text"] == "0.2003 mm"
    assert lesions_geojson(entry)["features"][0]["properties"]["diameter_text"] == "0.2003 mm"
    negative = next(e for e in catalog.slides.values() if e.result["slide_id"] == "node1")
    assert slide_summary(negative, None)["largest_deposit_text"] == "—"
