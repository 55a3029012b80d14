"""Case report: figures pinned numerically, then the real report of a real `micromets case` run, read as a person
would — the PDF rendered to pictures and text (poppler), the HTML opened in headless Chromium."""

import base64
import io
import json
import os
import shutil
import subprocess
import sys
import warnings
from html import escape
from pathlib import Path
from xml.etree import ElementTree

import numpy as np
import pytest
from conftest import require_tools
from PIL import Image

from micromets.errors import MicrometsError
from micromets.report import figures, write_report
from micromets.report import pdf as report_pdf
from micromets.sizes import format_mm


REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- figures


@pytest.mark.parametrize("max_um, expected", [(1.0, 1.0), (1.99, 1.0), (2.0, 2.0), (4.99, 2.0), (5.0, 5.0),
                                              (9.99, 5.0), (10.0, 10.0), (730.0, 500.0), (2100.0, 2000.0)])
def test_scale_bar_length_is_the_largest_1_2_5_value_that_fits(max_um, expected):
    assert figures.nice_length_um(max_um) == pytest.approx(expected)


def test_lengths_switch_to_mm_at_1000_um():
    assert figures.format_length_um(999) == "999 µm"
    assert figures.format_length_um(1000) == "1 mm"
    assert figures.format_length_um(2500) == "2.5 mm"


def test_scale_bar_pixels_match_its_label():
    img = np.full((300, 800, 3), 255, np.uint8)
    out, length_um = figures.draw_scale_bar(img, img_mpp=2.0)
    assert length_um == 200.0  # 30 % of 800 px × 2 µm/px = 480 µm → 200 µm
    black = np.all(out < 30, axis=2)
    widest_row = black.sum(axis=1).max()
    assert widest_row == round(length_um / 2.0)


def test_heatmap_colours_and_transparency():
    assert figures.prob_colours(np.float32(0)).tolist() == [40, 60, 160]
    assert figures.prob_colours(np.float32(1)).tolist() == [200, 20, 30]
    rgba = figures.heatmap_rgba(np.array([[0.0, 0.019, 0.02, 1.0]], np.float32))
    assert rgba[0, :, 3].tolist() == [0, 0, round(255 * (0.35 + 0.65 * 0.02)), 255]


def test_heatmap_overlay_lands_on_the_cell_it_belongs_to():
    # heatmap: 32 µm cells at 0.5 µm/px level 0 → 64 level-0 px per cell; origin offset (32, 0) level-0 px.
    h_prob = np.zeros((4, 5), np.float32)
    h_prob[2, 3] = 1.0
    img = np.full((100, 100, 3), 255, np.uint8)  # picture at 4 µm/px: 8 level-0 px per picture px
    out = figures.overlay_heatmap(img, 4.0, h_prob, 32.0, (32.0, 0.0), 0.5, opacity=1.0)
    red = (out[..., 0] == 200) & (out[..., 1] == 20)
    rows, cols = np.nonzero(red)
    # cell (2, 3) covers level-0 x in [32 + 3*64, 32 + 4*64) = [224, 288) → picture px 28..35, y [128, 192) → 16..23
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (16, 23, 28, 35)
    assert np.all(out[:16] >= 200)  # above: cells of probability 0 stay untouched (transparent)


def test_size_plot_draws_each_deposit_against_the_0_2_and_2_0_mm_lines():
    svg = figures.size_bars_svg([("#1", 0.15, "itc"), ("#2", 1.2, "micro"), ("#3", 4.0, "macro"), ("#4", 0.004, "itc")])
    root = ElementTree.fromstring(svg)
    ns = "{http://www.w3.org/2000/svg}"
    texts = [t.text for t in root.iter(f"{ns}text")]
    assert "0.15 mm" in texts and "1.20 mm" in texts and "4.00 mm" in texts and "0.004 mm" in texts
    dashed = [ln for ln in root.iter(f"{ns}line") if ln.get("stroke-dasharray")]
    assert len(dashed) == 2
    x_02, x_20 = sorted(float(ln.get("x1")) for ln in dashed)
    bars = [r for r in root.iter(f"{ns}rect") if r.get("stroke") == "#222"]
    ends = sorted(float(r.get("x")) + float(r.get("width")) for r in bars)
    assert ends[1] < x_02 < ends[2] < x_20 < ends[3]


# ---------------------------------------------------------------- the real report


@pytest.fixture(scope="module")
def case_dir(demo_output):
    """The patient folder of a real `micromets case` run on the bundled demo manifest."""
    return next(p.parent for p in demo_output.glob("*/case.json"))


@pytest.fixture(scope="module")
def written(case_dir):
    html = write_report(case_dir)
    return html, case_dir / "report.pdf", json.loads((case_dir / "case.json").read_text())


def _slide_results(case_dir: Path, case: dict) -> list[dict]:
    return [json.loads((case_dir / sid / "result.json").read_text()) for n in case["nodes"] for sid in n["slides"]]


def test_pdf_text_shows_stage_classes_and_sizes(written, case_dir, artifacts):
    require_tools("chromium", "pdftotext")
    html, pdf, case = written
    assert pdf.is_file()
    text = subprocess.run(["pdftotext", "-layout", str(pdf), "-"], capture_output=True, text=True,
                          check=True).stdout
    (artifacts / "report.txt").write_text(text)
    assert case["pn_stage"] in text
    assert "Research use only" in text
    for node in case["nodes"]:
        assert f"Node {node['node']}" in text
        assert node["node_class"] in text
    for result in _slide_results(case_dir, case):
        assert result["sha256"][:16] in text
        for lesion in result["lesions"]:
            assert format_mm(lesion["diameter_mm"], unit=False) in text


def test_pdf_pages_carry_the_pictures(written, case_dir, artifacts):
    require_tools("chromium", "pdftoppm", "pdfimages")
    html, pdf, case = written
    prefix = artifacts / "report-page"
    for old in artifacts.glob("report-page*.png"):
        old.unlink()
    subprocess.run(["pdftoppm", "-r", "50", "-png", str(pdf), str(prefix)], check=True)
    pages = sorted(artifacts.glob("report-page*.png"))
    assert len(pages) >= 1 + len(case["nodes"])
    # the raster pictures embedded in the PDF: at least one slide thumbnail per slide, on a page of its node
    listing = subprocess.run(["pdfimages", "-list", str(pdf)], check=True, capture_output=True, text=True).stdout
    rows = [line.split() for line in listing.splitlines()[2:] if line.strip()]
    big = [row for row in rows if row[2] == "image" and int(row[3]) >= 300 and int(row[4]) >= 300]
    n_slides = sum(len(node["slides"]) for node in case["nodes"])
    assert len(big) >= n_slides
    assert len({row[0] for row in big}) >= sum(1 for node in case["nodes"] if node["slides"])
    # and the rendered pages show them (tissue colour somewhere in the document)
    assert any((lambda rgb: (rgb.max(axis=2) - rgb.min(axis=2) > 60).mean() > 0.02)(
        np.asarray(Image.open(page).convert("RGB")).astype(int)) for page in pages)


def test_html_is_self_contained_with_one_thumbnail_per_slide_and_one_crop_per_positive_slide(written, case_dir):
    html, _, case = written
    text = html.read_text()
    assert "src=\"http" not in text and "href=\"http" not in text  # nothing fetched from the network
    results = _slide_results(case_dir, case)
    thumbs = text.count('class="slide-thumb"')
    crops = text.count('class="deposit-crop"')
    assert thumbs == len(results)
    assert crops == sum(1 for r in results if r["lesions"])
    for uri in text.split('src="data:image/')[1:]:
        payload = uri.split(",", 1)[1].split('"', 1)[0]
        img = Image.open(io.BytesIO(base64.b64decode(payload)))
        assert min(img.size) > 50


@pytest.mark.browser
def test_html_renders_in_chromium_with_all_images_loaded(written, tmp_path, artifacts):
    html, _, case = written
    browser = report_pdf.find_chromium()
    if browser is None:
        pytest.skip("chromium not installed")
    shot = artifacts / "report-chromium.png"
    dom = subprocess.run([browser, *report_pdf.chromium_flags(str(tmp_path / "profile")), "--dump-dom",
                          html.as_uri()], capture_output=True, text=True, timeout=120)
    assert case["pn_stage"] in dom.stdout
    subprocess.run([browser, *report_pdf.chromium_flags(str(tmp_path / "profile2")), "--window-size=1000,1400",
                    f"--screenshot={shot}", html.as_uri()], capture_output=True, timeout=120)
    rgb = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert (rgb.max(axis=2) - rgb.min(axis=2) > 60).mean() > 0.001  # class badges / stage box drawn in colour


def test_report_survives_a_missing_slide_image(case_dir, tmp_path):
    copy = tmp_path / case_dir.name
    shutil.copytree(case_dir, copy)
    case = json.loads((copy / "case.json").read_text())
    sid = case["nodes"][0]["slides"][0]
    result_path = copy / sid / "result.json"
    result = json.loads(result_path.read_text())
    result["path"] = str(tmp_path / "moved-away.tiff")
    result_path.write_text(json.dumps(result))
    html = write_report(copy, pdf=False)
    text = html.read_text()
    assert "moved-away.tiff: no such file" in text
    assert case["pn_stage"] in text


def test_without_chromium_the_html_is_written_and_one_warning_says_so(case_dir, tmp_path, monkeypatch):
    copy = tmp_path / case_dir.name
    shutil.copytree(case_dir, copy)
    (copy / "report.pdf").unlink(missing_ok=True)
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    monkeypatch.setattr(report_pdf, "_warned_missing", False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        write_report(copy)
        write_report(copy)
    assert (copy / "report.html").is_file() and not (copy / "report.pdf").exists()
    assert [str(w.message) for w in caught] == ["Chromium not found on PATH: writing the HTML report only, no PDF"]


def test_missing_case_json_is_one_clear_error(tmp_path):
    with pytest.raises(MicrometsError, match=r"case\.json: not found"):
        write_report(tmp_path)


def test_cli_rebuilds_the_report_and_refuses_an_empty_folder(case_dir, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    copy = tmp_path / "out" / case_dir.name
    shutil.copytree(case_dir, copy)
    (copy / "report.html").unlink(missing_ok=True)
    done = subprocess.run([sys.executable, "-m", "micromets", "report", str(copy.parent), "--no-pdf"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert (copy / "report.html").is_file()
    empty = tmp_path / "empty"
    empty.mkdir()
    done = subprocess.run([sys.executable, "-m", "micromets", "report", str(empty)], capture_output=True,
                          text=True, env=env, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [f"micromets: error: {empty}: no case.json here or in its "
                                                "sub-folders (run `micromets case` first)"]


def test_every_pdf_page_names_the_patient_and_its_number(written):
    require_tools("chromium", "pdftotext", "pdfinfo")
    html, pdf, case = written
    info = subprocess.run(["pdfinfo", str(pdf)], capture_output=True, text=True, check=True).stdout
    n_pages = int(next(line.split()[-1] for line in info.splitlines() if line.startswith("Pages:")))
    for page in range(1, n_pages + 1):
        text = subprocess.run(["pdftotext", "-f", str(page), "-l", str(page), "-layout", str(pdf), "-"],
                              capture_output=True, text=True, check=True).stdout
        assert f"patient {case['patient']}" in text and f"page {page} of {n_pages}" in text, page


def test_patient_id_cannot_break_out_of_the_page_footer_css():
    from micromets.report.case_report import css_string

    assert str(css_string('p1 "</style><b>&')) == '"p1 \\22 \\3c \\2f style\\3e \\3c b\\3e \\26 "'


def test_model_section_is_plain_language_from_the_card(written):
    """The model section says what the model learned from, how it did on patches it never saw (counts and
    rates, not a dump of the card's fields) and its failure modes."""
    from micromets.model import Detector

    html, pdf, case = written
    text = html.read_text()
    card = Detector.load().card
    summary = card["metrics"]["held_out"]["summary"]  # whole sources held out, over seeds
    assert f"area under the ROC curve {summary['c16_patches']['auc']['mean']:.2f}" in text
    assert f"pcam hard negative {summary['pcam_hard_negative']['share_windows_at_or_above']['mean']:.0%}" in text
    assert f"brecahad carcinoma {summary['brecahad_carcinoma']['labelled_window_sensitivity']['mean']:.0%}" in text
    assert escape(card["training_data"][0]["name"]) in text
    assert 'id="model-failures"' in text
    assert "held_out_predictions" not in text and "held_out confusion" not in text
    # issue 15: how far an H&E cell count can be trusted, measured against hand counts (the nucleus card)
    from micromets.cells import model_card

    recall = model_card()["metrics"]["hand_counts"]["summary"]["recall"]
    assert "a lower bound: on 90 tumour nuclei marked by hand" in text and f"it counted {recall:.0%} of them" in text


def test_model_sentences_read_a_binary_card_by_its_confusion():
    """A card with one held-out confusion (the binary cnn-ln model) is told in counts and rates."""
    from micromets.model import installed_models
    from micromets.report.case_report import model_sentences

    card = json.loads((installed_models()["cnn-ln"] / "model.json").read_text())
    conf = card["metrics"]["held_out"]["confusion"]
    n_t = conf["tp"] + conf["fn"]
    text = model_sentences(card)["held_out"]
    assert f"called {conf['tp']} of {n_t} tumour patches tumour (sensitivity {conf['tp'] / n_t:.0%})" in text


def test_model_sentences_tell_the_verifier_and_its_own_held_out_numbers():
    """A card with a seed-ensemble verifier says so in words, with the ensemble's held-out table when it has one;
    a card without a verifier says nothing of it."""
    from micromets.report.case_report import model_sentences

    held = {"summary": {"c16_patches": {"auc": {"mean": 0.98}}}, "seeds": [0, 1, 2], "threshold": 0.5,
            "ensemble": {"members": [0, 1, 2], "table": {
                "c16_patches": {"kind": "both", "auc": 0.991},
                "pcam_hard_negative": {"kind": "normal", "share_images_called_tumour": 0.1,
                                       "share_windows_at_or_above": 0.083},
                "bach_carcinoma": {"kind": "carcinoma", "share_images_found": 1.0,
                                   "share_windows_at_or_above": 0.2}}}}
    held["ensemble"]["table"]["operating_point"] = {"threshold": 0.73, "normal_window_share": 0.043}
    card = {"metrics": {"held_out": held}, "verifier": {"members": [{"seed": 0}, {"seed": 1}, {"seed": 2}]},
            "confirm_threshold": 0.73}
    text = model_sentences(card)["held_out"]
    assert ("confirmed again by the average of 3 models of the same recipe trained with seeds 0, 1, 2, and counts "
            "only if that average reaches 0.73, the threshold at which tissue of sources it never saw averaged 4% of "
            "normal fields called tumour") in text
    assert "CAMELYON16 patch AUC 0.99; normal fields called tumour: pcam hard negative 8%." in text
    assert "average" not in model_sentences({"metrics": {"held_out": held}})["held_out"]


def test_the_report_describes_the_installed_model_a_result_names_else_the_default():
    from micromets.model import Detector
    from micromets.report.case_report import model_card_of, model_sentences

    card = model_card_of({"name": "micromets-tissue-context", "version": "0.6.0"})
    assert card["name"] == "micromets-tissue-context" and "second network" in model_sentences(card)["held_out"]
    default = Detector.load().card
    assert model_card_of({"name": "someone's own", "version": "1"}) == default == model_card_of(None)
    assert "second network" not in model_sentences(default)["held_out"]


def test_model_sentences_tell_the_context_model_and_what_it_changed_held_out():
    from micromets.report.case_report import model_sentences

    context = {"folder": "context", "field_um": 96.0, "input_mpp": 1.0,
               "held_out": {"c17_negative": {"without": 0.468, "with": 0.039}}}
    text = model_sentences({"context": context})["held_out"]
    assert ("checked by a second network that sees 96 µm around the field's centre at 1 µm/px: a group of touching "
            "fields counts as tumour only if that network calls at least one of them tumour too. Held out, without → "
            "with it: c17 negative: 46.8% → 3.9%.") in text
    assert "second network" not in model_sentences({})["held_out"]


# ---------------------------------------------------------------- synoptic block (CAP breast, regional nodes)


def _cell(html_text: str, element_id: str) -> str:
    """The text of the element with ``element_id`` (tags stripped, spaces collapsed)."""
    import re

    match = re.search(rf'id="{element_id}"[^>]*>(.*?)</t[dh]>', html_text, re.S)
    assert match, element_id
    return " ".join(re.sub(r"<[^>]+>", " ", match.group(1)).split()).replace(" )", ")")


def _demo_inputs(case_dir: Path) -> tuple[dict, dict[str, dict]]:
    case = json.loads((case_dir / "case.json").read_text())
    return case, {r["slide_id"]: r for r in _slide_results(case_dir, case)}


def test_synoptic_block_on_the_demo_case(written, case_dir):
    """Every CAP regional-node item, read from the rendered report, against the case it was made from."""
    from micromets.rules import ajcc8, camelyon17

    html, pdf, case = written
    text = html.read_text()
    classes = [n["node_class"] for n in case["nodes"]]
    assert _cell(text, "syn-sentinel") == str(len(case["nodes"]))
    for mode in ("ajcc8", "camelyon17"):
        for cls in ("macro", "micro", "itc"):
            assert _cell(text, f"syn-{cls}-{mode}") == str(classes.count(cls)), (mode, cls)
    ajcc = ajcc8.stage_patient_ajcc8(case["nodes"], sentinel_only=True)
    c17 = camelyon17.with_modifiers(camelyon17.stage_patient(classes), n_nodes=len(classes), sentinel_only=True,
                                    mol_positive=False)
    assert (ajcc, c17) == ("pN1mi(sn)", "pN1mi(sn)")  # demo: one micro, one ITC node of 3 sentinel nodes
    assert _cell(text, "syn-pn-ajcc8") == ajcc and _cell(text, "syn-pn-camelyon17") == c17
    assert _cell(text, "syn-modifiers-ajcc8") == "(sn)"
    assert _cell(text, "syn-reason-ajcc8").startswith("AJCC 8 rule → pN1mi(sn): 1 of 3 nodes positive")
    assert _cell(text, "syn-reason-camelyon17") == case["stage_reason"]  # the case's own rule, same words
    largest = max(n["largest_deposit_mm"] or 0 for n in case["nodes"])
    node = next(n["node"] for n in case["nodes"] if n["largest_deposit_mm"] == largest)
    assert _cell(text, "syn-largest") == f"{format_mm(largest)} (node {node}; maximum Feret diameter)"
    assert _cell(text, "syn-methods") == "H&amp;E (3 slides)"
    assert _cell(text, "syn-ene") == "not assessed (micromets cannot assess it)"
    assert "Values proposed by micromets; not reviewed by a pathologist yet." in text
    require_tools("pdftotext")
    pdf_text = subprocess.run(["pdftotext", "-f", "1", "-l", "1", str(pdf), "-"], capture_output=True, text=True,
                              check=True).stdout
    assert "Regional lymph nodes (synoptic" in pdf_text and "Extranodal extension" in pdf_text  # on page 1


def test_synoptic_conventions_differ_at_the_boundaries(case_dir):
    """A deposit of exactly 2.0 mm is a micrometastasis by AJCC 8 and a macrometastasis by CAMELYON17; one of
    exactly 0.2 mm is ITC by AJCC 8 and micro by CAMELYON17: the two pN categories then differ."""
    from micromets.report.synoptic import synoptic
    from micromets.rules import ajcc8

    case, results = _demo_inputs(case_dir)
    for slide_id, mm in (("node2", 2.0), ("node3", 0.2)):
        les = results[slide_id]["lesions"][0]
        les |= {"diameter_mm": mm, "n_cells": None, "class": ajcc8.node_class(mm)}
        results[slide_id]["node_class"] = les["class"]
    syn = synoptic(case, results, [])
    by = {c["mode"]: c for c in syn["conventions"]}
    assert (by["ajcc8"]["macro"], by["ajcc8"]["micro"], by["ajcc8"]["itc"]) == (0, 1, 1)
    assert (by["camelyon17"]["macro"], by["camelyon17"]["micro"], by["camelyon17"]["itc"]) == (1, 1, 0)
    assert (by["ajcc8"]["pn"], by["camelyon17"]["pn"]) == ("pN1mi(sn)", "pN1(sn)")
    assert by["camelyon17"]["reason"].startswith("CAMELYON17 rule → pN1: 2 of 3 nodes positive (1 macro, 1 micro)")
    assert format_mm(syn["largest_mm"]) == "2.00 mm" and syn["largest_node"] == "2"
    # a class the pathologist set (not the AJCC 8 rule's for that size) stands in both conventions
    results["node3"]["lesions"][0]["class"] = results["node3"]["node_class"] = "macro"
    by = {c["mode"]: c for c in synoptic(case, results, [])["conventions"]}
    assert by["ajcc8"]["macro"] == 1 and by["camelyon17"]["macro"] == 2


def test_synoptic_osna_only_node_gives_mol_plus_in_both_conventions(case_dir):
    from micromets.report.synoptic import synoptic

    case, results = _demo_inputs(case_dir)
    case["nodes"][0]["osna_copies_per_ul"] = 3000.0  # node 1, negative on H&E: OSNA "+" (micro)
    syn = synoptic(case, results, [])
    by = {c["mode"]: c for c in syn["conventions"]}
    assert by["ajcc8"]["pn"] == by["camelyon17"]["pn"] == "pN1mi(mol+)(sn)"
    assert by["ajcc8"]["modifiers"] == ["(mol+)", "(sn)"]
    assert by["ajcc8"]["micro"] == 2
    assert syn["methods"] == "H&E (3 slides), OSNA CK19 mRNA (1 node)"
    case["nodes"][0]["osna_copies_per_ul"] = 249.0  # below 250 copies/µL: negative, no (mol+)
    assert {c["pn"] for c in synoptic(case, results, [])["conventions"]} == {"pN1mi(sn)"}


def _reviewed_copy(case_dir: Path, tmp_path: Path) -> tuple[Path, str, str]:
    """A copy of the demo case, its report HTML before and after the pathologist rejects node 2's deposit."""
    from micromets import review
    from micromets.report.case_report import render_report_html

    copy = tmp_path / case_dir.name
    shutil.copytree(case_dir, copy)
    before = render_report_html(copy)
    review.append(copy, {"by": "Dr A", "action": "reject", "slide": "node2", "finding": "lesion:1"})
    return copy, before, render_report_html(copy)


def test_reviewed_case_shows_decided_synoptic_values(case_dir, tmp_path):
    """After the pathologist rejects node 2's deposit the synoptic block shows the decided values and says so."""
    copy, before, text = _reviewed_copy(case_dir, tmp_path)
    case = json.loads((copy / "case.json").read_text())
    assert _cell(before, "syn-micro-ajcc8") == "1"
    assert "Values decided by the pathologist (1 recorded decision)." in text
    assert _cell(text, "syn-micro-ajcc8") == "0" and _cell(text, "syn-itc-ajcc8") == "1"
    assert _cell(text, "syn-pn-ajcc8") == "pN0(i+)(sn)"
    assert _cell(text, "syn-pn-camelyon17") == "pN0(i+)(sn)"
    assert _cell(text, "syn-largest").startswith(format_mm(case["nodes"][2]["largest_deposit_mm"]) + " (node 3")


def test_stage_box_labels_the_proposed_and_the_decided_stage(case_dir, tmp_path):
    """The first-page stage box says whose stage it is and by which rule: proposed by micromets until the
    pathologist decides, then the decided stage large and the proposed one beside it."""
    copy, before, text = _reviewed_copy(case_dir, tmp_path)
    case = json.loads((copy / "case.json").read_text())
    assert "pN stage proposed by micromets (CAMELYON17 rule), not reviewed by a pathologist yet" in before
    assert 'id="pn-stage-decided"' not in before
    assert "pN stage decided by the pathologist (CAMELYON17 rule)" in text
    assert '<div class="stage" id="pn-stage-decided">pN0(i+)</div>' in text
    assert f'id="pn-stage">{case["pn_stage"]}</div>' in text  # the proposed one, still shown
    # the per-node table below keeps the proposed classes and now says so
    assert "<h2>Nodes, as proposed by micromets" in text and "<h2>Nodes</h2>" in before
    assert 'Why (decided):</b> <span id="stage-reason">CAMELYON17 rule → pN0(i+): 0 of 3 nodes positive' in text


def test_first_pdf_page_is_not_half_empty(written, artifacts):
    """Page 1 (stage box, synoptic block) is filled down to the footer, not a stage box over blank paper."""
    require_tools("chromium", "pdftoppm")
    html, pdf, case = written
    prefix = artifacts / "report-first-page"
    subprocess.run(["pdftoppm", "-r", "40", "-gray", "-png", "-f", "1", "-l", "1", "-singlefile", str(pdf),
                    str(prefix)], check=True)
    page = np.asarray(Image.open(prefix.with_suffix(".png")))
    body = page[: int(page.shape[0] * 0.93)]  # above the page footer
    inked = np.nonzero((body < 200).any(axis=1))[0]
    assert inked.max() / page.shape[0] > 0.80, inked.max() / page.shape[0]


def test_a_slide_that_is_not_lymph_node_is_flagged_on_page_1_and_on_the_slide(shared_data, tmp_path, artifacts,
                                                                               written):
    """The bundled skin SVS (micromets.ood: 16 % lymph-node-like tissue) analysed as a node: page 1 and its slide
    section carry the warning; the demo report (lymph nodes) has none."""
    require_tools("chromium", "pdftotext", "pdftoppm")
    import markupsafe

    from micromets.case import run_case
    from micromets.model import Detector
    from micromets.ood import WARNING

    manifest = tmp_path / "manifest.csv"
    manifest.write_text(f"patient,node,slide_path\nskin,1,{shared_data / 'slides' / 'cmu_small_region.svs'}\n")
    [case] = run_case(manifest, tmp_path / "out", detector=Detector.load())
    assert case["nodes"][0]["ood"]["cmu_small_region"]["flagged"]
    pdf = tmp_path / "out" / "skin" / "report.pdf"
    page1 = subprocess.run(["pdftotext", "-f", "1", "-l", "1", str(pdf), "-"], capture_output=True, text=True,
                           check=True).stdout
    assert "may not be lymph node" in page1 and "cmu_small_region" in page1
    html = (tmp_path / "out" / "skin" / "report.html").read_text()
    assert html.count(str(markupsafe.escape(WARNING))) == 2  # page 1 and the slide's section
    subprocess.run(["pdftoppm", "-r", "60", "-png", "-f", "1", "-l", "1", "-singlefile", str(pdf),
                    str(artifacts / "report-ood-first-page")], check=True)
    demo_html, _, _ = written
    assert "may not be lymph node" not in demo_html.read_text()
