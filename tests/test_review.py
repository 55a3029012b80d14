"""Review and sign-out: decisions through the viewer's HTTP API on a copy of a real `micromets case` output, the
append-only audit log, the stage recomputed by the node and patient rules, a restart, the exports and the report."""

import csv
import io
import json
import shutil
import time
import xml.etree.ElementTree as ET

import httpx
import pytest

from micromets.annotations import read_asap_xml
from micromets.errors import MicrometsError
from micromets.report import render_report_html
from micromets import review
from micromets.viewer import create_app
from micromets.viewer.server import BackgroundServer
from test_viewer import browser, _wait  # noqa: F401  (the real-Chromium fixture of the viewer tests)


@pytest.fixture()
def case_copy(demo_output, tmp_path):
    """A private copy of the demo results (the review writes review.jsonl into it)."""
    shutil.copytree(demo_output, tmp_path / "out")
    return tmp_path / "out"


def _post(base, case, event, **kw):
    return httpx.post(f"{base}/api/cases/{case}/review", json=event, timeout=60, **kw)


def test_review_flow_changes_the_stage_logs_every_step_survives_a_restart_and_freezes(case_copy):
    patient_dir = case_copy / "demo_patient"
    proposed = json.loads((patient_dir / "case.json").read_text())
    assert proposed["pn_stage"] == "pN1mi"  # node 2 micro 0.91 mm, node 3 ITC, node 1 negative
    slides_before = {p: p.stat().st_mtime_ns for p in patient_dir.rglob("result.json")}
    app = create_app(case_copy)
    (case,) = app.state.catalog.case_dirs
    with BackgroundServer(app) as base:
        state = httpx.get(f"{base}/api/cases/{case}/review").json()
        assert state["decided"]["pn_stage"] == "pN1mi" and not state["events"]
        dr = {"by": "Dr Test"}
        # reject the false lesion of node 2: only node 3's ITC is left
        state = _post(base, case, dr | {"action": "reject", "slide": "node2", "finding": "lesion:1"}).json()["state"]
        assert state["decided"]["pn_stage"] == "pN0(i+)"
        # add a deposit the software missed on node 1: a 0.4 x 0.2 mm rectangle at 0.486 µm/px
        ring = [[1000, 1000], [1823, 1000], [1823, 1411], [1000, 1411]]
        resp = _post(base, case, dr | {"action": "draw", "slide": "node1", "l0_outline": [ring]}).json()
        assert resp["event"]["diameter_mm"] == pytest.approx(0.486e-3 * (823**2 + 411**2) ** 0.5, rel=1e-3)
        assert resp["event"]["class"] == "micro" and resp["state"]["decided"]["pn_stage"] == "pN1mi"
        # reclassify node 3's deposit (say, > 200 cells counted by the pathologist)
        state = _post(base, case, dr | {"action": "reclassify", "slide": "node3", "finding": "lesion:1",
                                        "class": "micro"}).json()["state"]
        assert [n["decided"] for n in state["nodes"]] == ["micro", "negative", "micro"]
        assert state["decided"]["stage_reason"].startswith("CAMELYON17 rule → pN1mi: 2 of 3 nodes positive")
        assert _post(base, case, dr | {"action": "ruler", "slide": "node1", "l0_a": [0, 0],
                                       "l0_b": [300, 400]}).json()["event"]["length_um"] == pytest.approx(243.0)
        assert _post(base, case, dr | {"action": "comment", "slide": "node3", "finding": "lesion:1",
                                       "text": "cohesive cluster, > 200 cells"}).status_code == 200
        # bad decisions are refused and not logged
        assert _post(base, case, dr | {"action": "reject", "slide": "node2", "finding": "lesion:9"}).status_code == 400
        assert _post(base, case, {"action": "reject", "slide": "node2", "finding": "lesion:1"}).status_code == 400
        assert _post(base, case, dr | {"action": "draw", "slide": "node1",
                                       "l0_outline": [[[0, 0], [10, 0], [99999, 5]]]}).status_code == 400
        as_text = json.dumps(dr | {"action": "comment", "text": "x"})
        assert httpx.post(f"{base}/api/cases/{case}/review", content=as_text,
                          headers={"content-type": "text/plain"}).status_code == 403
        assert _post(base, case, dr | {"action": "comment", "text": "x"},
                     headers={"origin": "http://evil.example"}).status_code == 403
        signed = _post(base, case, {"action": "sign", "by": "Dr Test"}).json()["state"]
        assert signed["frozen"] and signed["signed"]["by"] == "Dr Test"
        assert _post(base, case, dr | {"action": "accept", "slide": "node2", "finding": "lesion:1"}).status_code == 409
        assert 'id="signed-by">Dr Test' in (patient_dir / "report.html").read_text()  # written at sign-out
    lines = (patient_dir / "review.jsonl").read_text().splitlines()
    events = [json.loads(line) for line in lines]
    assert [e["action"] for e in events] == ["reject", "draw", "reclassify", "ruler", "comment", "sign"]
    assert [e["seq"] for e in events] == list(range(1, 7)) and all(e["by"] == "Dr Test" and e["at"] for e in events)
    # the viewer wrote nothing but the log and the signed report: results and case untouched
    assert {p: p.stat().st_mtime_ns for p in patient_dir.rglob("result.json")} == slides_before
    assert json.loads((patient_dir / "case.json").read_text()) == proposed
    # a restart (a new application over the same folder) shows the same state
    with BackgroundServer(create_app(case_copy)) as base:
        again = httpx.get(f"{base}/api/cases/{case}/review").json()
        assert again == signed
        rows = list(csv.DictReader(io.StringIO(httpx.get(f"{base}/api/cases/{case}/review.csv").text)))
        assert {(r["slide"], r["finding"], r["decided"]) for r in rows} >= {
            ("node2", "lesion:1", "rejected"), ("node1", "drawn:1", "micro"), ("node3", "lesion:1", "micro")}
        geo = httpx.get(f"{base}/api/cases/{case}/review/node1.geojson").json()
        assert {f["geometry"]["type"] for f in geo["features"]} == {"MultiPolygon", "LineString"}
        drawn = next(f for f in geo["features"] if f.get("id") == "drawn:1")
        assert drawn["properties"]["classification"]["name"] == "micro"
        assert drawn["geometry"]["coordinates"][0][0][0] == drawn["geometry"]["coordinates"][0][0][-1]
        xml = case_copy.parent / "node2.xml"  # the decisions as ASAP XML, grouped by decided class
        xml.write_bytes(httpx.get(f"{base}/api/cases/{case}/review/node2.xml").content)
        groups = {a.get("Name"): a.get("PartOfGroup") for a in ET.parse(xml).iter("Annotation")}
        assert groups["lesion:1"] == "rejected"
        assert "lesion:1" in read_asap_xml(xml).tumour_names  # and ASAP's reader takes the outline back
        report = httpx.get(f"{base}/api/cases/{case}/report", timeout=120).text
    assert 'class="stage-proposed"><b>pN1mi' in report and 'class="stage-decided"><b>pN1mi' in report
    assert "reject slide node2 lesion:1" in report and "reclassify slide node3 lesion:1 → micro" in report
    assert "draw slide node1 drawn:1" in report and 'id="signed-by">Dr Test' in report


def test_an_unreviewed_report_says_so(case_copy):
    html = render_report_html(case_copy / "demo_patient")
    assert "not reviewed" in html and "Not signed out" in html


def test_an_accepted_candidate_counts_and_a_rejected_one_does_not(candidate_output, tmp_path):
    """On the demo case confirmed at 0.8 (conftest ``candidate_output``), node 3's ITC is an unconfirmed
    candidate: it counts for nothing until a reviewer accepts it, and the latest decision holds."""
    shutil.copytree(candidate_output, tmp_path / "out")
    patient_dir = tmp_path / "out" / "demo_patient"
    by = {"by": "Dr B"}
    review.append(patient_dir, by | {"action": "reject", "slide": "node2", "finding": "lesion:1"})
    assert review.review_state(patient_dir)["decided"]["pn_stage"] == "pN0"
    review.append(patient_dir, by | {"action": "accept", "slide": "node3", "finding": "candidate:1"})
    assert review.review_state(patient_dir)["decided"]["pn_stage"] == "pN0(i+)"  # a 0.14 mm candidate: ITC
    review.append(patient_dir, by | {"action": "reject", "slide": "node3", "finding": "candidate:1"})
    assert review.review_state(patient_dir)["decided"]["pn_stage"] == "pN0"  # the latest decision holds
    with pytest.raises(MicrometsError, match="not itc, micro or macro"):
        review.append(patient_dir, by | {"action": "reclassify", "slide": "node2", "finding": "lesion:1",
                                         "class": "negative"})
    assert len(review.read_log(patient_dir)) == 3


def test_a_damaged_case_or_result_file_is_a_one_line_error_and_the_log_is_kept(case_copy):
    """A decision on a case whose case.json or a slide's result.json was damaged since (truncated, replaced) is
    refused in one line naming the file (HTTP 400 in the viewer), and the audit log already written stays."""
    patient_dir = case_copy / "demo_patient"
    decision = {"by": "Dr B", "action": "reject", "slide": "node3", "finding": "lesion:1"}
    review.append(patient_dir, decision)
    log_before = (patient_dir / "review.jsonl").read_bytes()
    case_json = patient_dir / "case.json"
    case_text = case_json.read_text()
    case_json.write_text(case_text[:200])
    with pytest.raises(MicrometsError, match=r"case\.json: malformed JSON"):
        review.append(patient_dir, decision)
    case_json.write_text(case_text)
    (patient_dir / "node2" / "result.json").write_text('{"schema": "something else"}')
    with pytest.raises(MicrometsError, match=r"node2/result\.json: not a micromets\.slide-result/1 file"):
        review.append(patient_dir, decision)
    assert (patient_dir / "review.jsonl").read_bytes() == log_before


@pytest.mark.browser
def test_review_in_chromium_reject_draw_reclassify_sign_and_reload(case_copy, browser):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from micromets.viewer.app import OSD_JS
    if not OSD_JS.is_file():
        pytest.skip("OpenSeadragon assets missing (make viewer-assets)")
    shots = case_copy.parent / "shots"
    shots.mkdir()
    app = create_app(case_copy)
    keys = {e.result["slide_id"]: k for k, e in app.state.catalog.slides.items()}
    with BackgroundServer(app) as base:
        browser.get(f"{base}/#slide={keys['node2']}&finding=lesion:1")  # a shared link to a lesion
        _wait(browser, "return micromets.state.review !== null && micromets.state.selected === 'lesion:1';")
        assert "lesion:1" in browser.find_element(By.ID, "selected-finding").text
        browser.find_element(By.ID, "reviewer").send_keys("Dr Selenium")
        browser.find_element(By.ID, "reject-btn").click()
        _wait(browser, "return micromets.state.review.decided.pn_stage === 'pN0(i+)';")
        # node 1 (no deposit, no candidate): draw a missed deposit by clicking 4 vertices
        browser.get(f"{base}/#slide={keys['node1']}")
        _wait(browser, f"return micromets.state.key === '{keys['node1']}' && micromets.state.review !== null;")
        time.sleep(1.0)
        assert "candidate" not in browser.find_element(By.ID, "lesion-list").text
        browser.find_element(By.ID, "draw-toggle").click()
        overlay = browser.find_element(By.ID, "overlay")
        for dx, dy in ((-120, -60), (120, -60), (120, 60), (-120, 60)):
            ActionChains(browser).move_to_element_with_offset(overlay, dx, dy).click().perform()
        browser.find_element(By.ID, "draw-finish").click()
        _wait(browser, "return micromets.state.review.decided.pn_stage === 'pN1mi';")
        drawn = browser.execute_script("return micromets.state.review.events.at(-1);")
        assert drawn["action"] == "draw" and drawn["class"] == "micro" and drawn["finding"] == "drawn:1"
        browser.save_screenshot(str(shots / "review-viewer-drawn.png"))
        # node 3: reclassify its deposit, then sign out
        browser.get(f"{base}/#slide={keys['node3']}&finding=lesion:1")
        _wait(browser, "return micromets.state.review !== null && micromets.state.selected === 'lesion:1';")
        time.sleep(1.0)
        browser.execute_script("micromets.state.selected = null; history.replaceState(null, '', '#slide=' +"
                               " micromets.state.key);")
        ActionChains(browser).move_to_element(browser.find_element(By.ID, "viewer")).click().perform()
        _wait(browser, "return micromets.state.selected === 'lesion:1' && location.hash.includes('finding=lesion');")
        browser.execute_script("document.getElementById('reclass-select').value = 'micro';")
        browser.find_element(By.ID, "reclass-btn").click()
        _wait(browser, "return micromets.state.review.nodes[2].decided === 'micro';")
        assert "micro" in browser.find_element(By.ID, "selected-finding").text
        browser.find_element(By.ID, "sign-name").send_keys("Dr Selenium")
        browser.find_element(By.ID, "sign-btn").click()
        _wait(browser, "return micromets.state.review.frozen;")
        assert browser.find_element(By.ID, "reject-btn").get_attribute("disabled")
        browser.save_screenshot(str(shots / "review-viewer-signed.png"))
    events = review.read_log(case_copy / "demo_patient")
    assert [e["action"] for e in events] == ["reject", "draw", "reclassify", "sign"]
    assert all(e["by"] == "Dr Selenium" for e in events)
    # restart: a new server shows the same decided, frozen state; the report shows proposed vs decided
    with BackgroundServer(create_app(case_copy)) as base:
        browser.get(f"{base}/#slide={keys['node3']}")
        _wait(browser, "return micromets.state.review !== null;")
        assert "pN1mi (decided; proposed pN1mi)" in browser.find_element(By.ID, "pn-stage").text
        assert browser.find_element(By.ID, "node-class").text == "micro"
        assert "signed out by Dr Selenium" in browser.find_element(By.ID, "review-status").text
        browser.get(f"{base}/api/cases/{app.state.catalog.cases[0]['case']}/report")
        _wait(browser, "return document.getElementById('review-changes') !== null;")
        text = browser.find_element(By.ID, "review").text
        assert "reject slide node2 lesion:1" in text and "Signed out by Dr Selenium" in text
        browser.save_screenshot(str(shots / "review-report.png"))


@pytest.mark.browser
def test_an_unconfirmed_candidate_is_listed_and_accepted_in_chromium(candidate_output, tmp_path, browser):
    """The viewer lists a slide's unconfirmed candidate beside its lesions, and the accept button counts it: on
    the demo case confirmed at 0.8, node 3's ITC is candidate:1 (node 3 negative); accepted, node 3 is ITC, and
    with node 2's micrometastasis rejected the stage is pN0(i+)."""
    from selenium.webdriver.common.by import By
    from micromets.viewer.app import OSD_JS
    if not OSD_JS.is_file():
        pytest.skip("OpenSeadragon assets missing (make viewer-assets)")
    shutil.copytree(candidate_output, tmp_path / "out")
    app = create_app(tmp_path / "out")
    keys = {e.result["slide_id"]: k for k, e in app.state.catalog.slides.items()}
    with BackgroundServer(app) as base:
        browser.get(f"{base}/#slide={keys['node3']}&finding=candidate:1")
        _wait(browser, "return micromets.state.review !== null && micromets.state.selected === 'candidate:1';")
        assert "candidate:1" in browser.find_element(By.ID, "lesion-list").text
        assert browser.find_element(By.ID, "node-class").text == "negative"
        browser.find_element(By.ID, "reviewer").send_keys("Dr Selenium")
        browser.find_element(By.ID, "accept-btn").click()
        _wait(browser, "return micromets.state.review.nodes[2].decided === 'itc';")
        browser.get(f"{base}/#slide={keys['node2']}&finding=lesion:1")
        _wait(browser, "return micromets.state.review !== null && micromets.state.selected === 'lesion:1';")
        browser.find_element(By.ID, "reject-btn").click()
        _wait(browser, "return micromets.state.review.decided.pn_stage === 'pN0(i+)';")
    assert [e["action"] for e in review.read_log(tmp_path / "out" / "demo_patient")] == ["accept", "reject"]
