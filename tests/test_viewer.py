"""Viewer: catalogue, HTTP API, safety (only catalogued slides, no path traversal, loopback), concurrency and cache
on a real `micromets case` output served by real uvicorn; then an end-to-end run in headless Chromium."""

import contextlib
import http.client
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import psutil
import pytest
import shapely
from openslide import OpenSlide
from openslide.deepzoom import DeepZoomGenerator
from PIL import Image

from micromets.errors import MicrometsError
from micromets.report.figures import CLASS_COLOURS, heatmap_rgba
from micromets.viewer import create_app
from micromets.viewer.catalog import build_catalog
from micromets.viewer.latency import tile_latency
from micromets.viewer.server import BackgroundServer, free_port
from micromets.viewer.tiles import TileCache


REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def results_dir(demo_output):
    """The output folder of a real `micromets case` run on the bundled demo manifest."""
    return demo_output


@pytest.fixture(scope="module")
def server(results_dir):
    app = create_app(results_dir)
    with BackgroundServer(app) as base_url:
        yield base_url, app


def _positive_key(app) -> str:
    """The catalogue key of the slide with the largest deposit."""
    return max(app.state.catalog.slides, key=lambda k: app.state.catalog.slides[k].result["largest_deposit_mm"] or 0)


def test_catalogue_lists_every_case_node_and_slide(results_dir):
    catalog = build_catalog(results_dir)
    cases = [json.loads(p.read_text()) for p in sorted(results_dir.glob("*/case.json"))]
    assert [c["patient"] for c in catalog.cases] == [c["patient"] for c in cases]
    for mine, theirs in zip(catalog.cases, cases):
        assert mine["pn_stage"] == theirs["pn_stage"]
        assert [n["node_class"] for n in mine["nodes"]] == [n["node_class"] for n in theirs["nodes"]]
        for node, their_node in zip(mine["nodes"], theirs["nodes"]):
            assert [catalog.slides[k].result["slide_id"] for k in node["slides"]] == their_node["slides"]
    assert len(catalog.slides) == len(list(results_dir.rglob("result.json")))


def test_slides_analysed_on_their_own_are_listed_without_a_case(results_dir, tmp_path):
    slide_dir = next(results_dir.rglob("result.json")).parent
    shutil.copytree(slide_dir, tmp_path / "analyze-out" / slide_dir.name)
    catalog = build_catalog(tmp_path / "analyze-out")
    assert list(catalog.slides) == [slide_dir.name]
    assert [(c["patient"], c["nodes"][0]["slides"]) for c in catalog.cases] == [(None, [slide_dir.name])]


def test_a_folder_without_results_is_refused(tmp_path):
    with pytest.raises(MicrometsError, match="no result.json found"):
        build_catalog(tmp_path)


def test_slide_api_and_lesions_are_level0_and_sorted_by_size(server, results_dir):
    base, app = server
    key = _positive_key(app)
    entry = app.state.catalog.slides[key]
    summary = httpx.get(f"{base}/api/slides/{key}").json()
    assert summary["pn_stage"] == json.loads((entry.result_dir.parent / "case.json").read_text())["pn_stage"]
    assert summary["node_class"] == entry.result["node_class"]
    assert summary["ood_warning"] is None  # a demo lymph node (micromets.ood)
    sizes = [les["diameter_mm"] for les in summary["lesions"]]
    assert sizes == sorted(sizes, reverse=True) and len(sizes) == entry.result["n_lesions"] > 0
    geo = httpx.get(f"{base}/api/slides/{key}/lesions.geojson").json()
    by_id = {les["id"]: les for les in entry.result["lesions"]}
    for feature in geo["features"]:
        ring = feature["geometry"]["coordinates"][0][0]
        assert ring[:-1] == by_id[feature["id"]]["l0_outline"][0][: len(ring) - 1]
        assert feature["properties"]["class"] == by_id[feature["id"]]["class"]


def test_heatmap_layer_is_one_pixel_block_per_cell(server):
    base, app = server
    key = _positive_key(app)
    entry = app.state.catalog.slides[key]
    h_prob = np.load(entry.result_dir / entry.result["heatmap"]["file"])
    img = np.asarray(Image.open(io.BytesIO(httpx.get(f"{base}/api/slides/{key}/heatmap.png").content)))
    k = img.shape[0] // h_prob.shape[0]
    assert img.shape[:2] == (h_prob.shape[0] * k, h_prob.shape[1] * k) and k >= 1
    expected = heatmap_rgba(h_prob)
    assert np.array_equal(img[::k, ::k], expected) and np.array_equal(img[k - 1::k, k - 1::k], expected)
    assert np.all(img[::k, ::k, 3][h_prob < 0.02] == 0) and img[..., 3].max() > 0


def test_cells_of_a_deposit_add_up_to_its_cell_count(server):
    """On the largest deposit whose cells were counted (deposits > analyze.CELL_COUNT_MAX_MM are not counted)."""
    base, app = server
    key, lesion = max(((k, les) for k, entry in app.state.catalog.slides.items() for les in entry.result["lesions"]
                       if les["n_cells"] is not None), key=lambda kl: kl[1]["diameter_mm"])
    entry = app.state.catalog.slides[key]
    geo = httpx.get(f"{base}/api/slides/{key}/lesions/{lesion['id']}/cells.geojson", timeout=120).json()
    assert geo["properties"]["n_cells"] == sum(f["properties"]["nuclei"] for f in geo["features"])
    assert {f["properties"]["objectType"] for f in geo["features"]} == {"detection"}  # QuPath imports them as such
    assert geo["properties"]["n_cells"] == lesion["n_cells"]  # recounted inside the recorded outline: the same cells
    outline = shapely.MultiPolygon([shapely.Polygon(ring) for ring in lesion["l0_outline"]])
    xy = np.array([f["geometry"]["coordinates"] for f in geo["features"]])
    assert shapely.contains_xy(outline.buffer(2 / entry.result["l0_mpp"]), xy[:, 0], xy[:, 1]).all()
    assert httpx.get(f"{base}/api/slides/{key}/lesions/9999/cells.geojson").status_code == 404


def test_tiles_are_openslide_deepzoom_tiles(server):
    base, app = server
    key = _positive_key(app)
    dzi = httpx.get(f"{base}/dzi/{key}/slide.dzi")
    assert dzi.status_code == 200 and "<Image" in dzi.text
    gen = DeepZoomGenerator(OpenSlide(str(app.state.catalog.slides[key].slide_path)), 254, 1, limit_bounds=False)
    level = gen.level_count - 3
    resp = httpx.get(f"{base}/dzi/{key}/slide_files/{level}/0_0.jpeg")
    assert resp.status_code == 200 and resp.headers["content-type"] == "image/jpeg"
    mine = np.asarray(Image.open(io.BytesIO(resp.content)).convert("RGB")).astype(int)
    ref = np.asarray(gen.get_tile(level, (0, 0)).convert("RGB")).astype(int)
    assert mine.shape == ref.shape and np.abs(mine - ref).mean() < 4  # JPEG quality 80
    cols, rows = gen.level_tiles[level]
    assert httpx.get(f"{base}/dzi/{key}/slide_files/{level}/{cols}_0.jpeg").status_code == 404
    assert httpx.get(f"{base}/dzi/{key}/slide_files/{gen.level_count}/0_0.jpeg").status_code == 404


@pytest.mark.parametrize("raw_path", [
    "/dzi/..%2F..%2F..%2Fetc%2Fpasswd/slide.dzi",
    "/dzi/../../../../etc/passwd",
    "/api/slides/..%2F..%2Fetc%2Fpasswd",
    "/api/slides/%2Fetc%2Fpasswd/heatmap.png",
    "/static/../../../../../../etc/passwd",
    "/static/%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
    "/static/..%2F..%2F..%2Fpyproject.toml",
    "/static/%2e%2e/app.py",
    "/dzi/not-a-slide/slide.dzi",
])
def test_path_traversal_and_unknown_slides_get_404(server, raw_path):
    base, _ = server
    host, port = base.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    conn.request("GET", raw_path)  # sent byte for byte, no client-side normalisation
    resp = conn.getresponse()
    body = resp.read()
    assert resp.status == 404, (raw_path, resp.status)
    assert b"root:" not in body and b"[project]" not in body


def test_concurrent_tile_requests_all_succeed_and_agree(server):
    base, app = server
    key = _positive_key(app)
    with app.state.tiles.generator(key) as gen:
        level = gen.level_count - 1
        cols, rows = gen.level_tiles[level]
    urls = [f"/dzi/{key}/slide_files/{level}/{c}_{r}.jpeg" for r in range(min(rows, 4)) for c in range(min(cols, 4))]
    got: dict[str, set] = {u: set() for u in urls}
    lock = threading.Lock()

    def client():
        with httpx.Client(base_url=base, timeout=60) as http_client:
            for url in urls:
                resp = http_client.get(url)
                assert resp.status_code == 200
                with lock:
                    got[url].add(resp.content)

    threads = [threading.Thread(target=client) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(len(v) == 1 for v in got.values())  # every client saw the same bytes for a tile
    assert app.state.tiles.cache.hits >= len(urls)


def test_tile_cache_is_lru_and_bounded_in_bytes():
    cache = TileCache(max_bytes=10)
    cache.put("a", b"1234")
    cache.put("b", b"1234")
    assert cache.get("a") == b"1234"  # a is now the most recent
    cache.put("c", b"1234")  # 12 bytes > 10: evicts the least recently used, b
    assert cache.get("b") is None and cache.get("a") == b"1234" and cache.get("c") == b"1234"
    assert cache.n_bytes == 8


def test_cli_binds_loopback_by_default(results_dir):
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    proc = subprocess.Popen([sys.executable, "-m", "micromets", "view", str(results_dir), "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        deadline = time.monotonic() + 60
        listening = []
        while not listening and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.3)
            listening = [c.laddr for c in psutil.Process(proc.pid).net_connections("tcp")
                         if c.status == psutil.CONN_LISTEN]
        assert [(a.ip, a.port) for a in listening] == [("127.0.0.1", port)]
        assert httpx.get(f"http://127.0.0.1:{port}/api/catalog").status_code == 200
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_cli_view_of_a_folder_without_results_is_one_line_exit_2(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    done = subprocess.run([sys.executable, "-m", "micromets", "view", str(tmp_path)], capture_output=True, text=True,
                          env=env, timeout=60)
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1 and "no result.json found" in done.stderr


def test_latency_benchmark_is_bounded_and_error_free(results_dir):
    out = tile_latency(results_dir, n_clients=8, max_requests=80, max_seconds=30)
    for name in ("cold", "warm"):
        assert out[name]["errors"] == 0 and 0 < out[name]["n"] <= 40
        assert 0 < out[name]["p50_ms"] <= out[name]["p95_ms"]


# ---------------------------------------------------------------- end to end in the browser


@pytest.fixture(scope="module")
def browser():
    if shutil.which("chromedriver") is None or shutil.which("chromium") is None:
        pytest.skip("chromium / chromedriver not installed")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="micromets-selenium-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium")
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                 "--window-size=1280,860", "--force-device-scale-factor=1", f"--user-data-dir={profile}"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=opts)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


def _wait(driver, script: str, timeout_s: float = 30.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = driver.execute_script(script)
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for: {script}")


def _viewer_pixels(driver, path: Path) -> np.ndarray:
    driver.save_screenshot(str(path))
    rect = driver.execute_script("const r = document.getElementById('viewer').getBoundingClientRect();"
                                 "return [r.left, r.top, r.width, r.height];")
    x, y, w, h = (int(v) for v in rect)
    return np.asarray(Image.open(path).convert("RGB")).astype(int)[y:y + h, x:x + w]


def _near(rgb: np.ndarray, colour, tol: int = 40) -> np.ndarray:
    return np.abs(rgb - np.asarray(colour)).max(axis=2) <= tol


LOADED = ("const w = micromets.viewer.world; return w.getItemCount() === 2 && micromets.state.heatmapItem !== null"
          " && w.getItemAt(0).getFullyLoaded() && w.getItemAt(1).getFullyLoaded();")


@pytest.mark.browser
def test_viewer_end_to_end_in_chromium(server, browser, artifacts):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    base, app = server
    key = _positive_key(app)
    entry = app.state.catalog.slides[key]
    browser.get(base + "/")
    # open the case: click the slide of the positive node in the case tree
    link = _wait(browser, f"return document.querySelector('#case-list a[data-key=\"{key}\"]');")
    link.click()
    _wait(browser, f"return micromets.state.key === '{key}';")
    _wait(browser, LOADED)
    time.sleep(0.5)
    top = browser.find_element(By.ID, "topbar").text
    assert entry.result["node_class"] in top
    case = json.loads((entry.result_dir.parent / "case.json").read_text())
    assert browser.find_element(By.ID, "pn-stage").text == case["pn_stage"]
    assert not browser.find_element(By.ID, "ood-warning").is_displayed()  # a lymph node: no warning
    assert not browser.find_element(By.ID, "ink-notice").is_displayed()  # no ink on the demo slides

    browser.execute_script("const r = document.getElementById('heatmap-opacity'); r.value = 20;"
                           "r.dispatchEvent(new Event('input'));")
    assert browser.execute_script("return micromets.state.heatmapItem.getOpacity();") == pytest.approx(0.2)
    browser.execute_script("const r = document.getElementById('heatmap-opacity'); r.value = 60;"
                           "r.dispatchEvent(new Event('input'));")
    time.sleep(0.5)
    with_heatmap = _viewer_pixels(browser, artifacts / "viewer-1-heatmap.png")
    browser.find_element(By.ID, "heatmap-toggle").click()
    _wait(browser, "return micromets.state.heatmapItem.getOpacity() === 0;")
    time.sleep(0.5)
    without = _viewer_pixels(browser, artifacts / "viewer-2-no-heatmap.png")
    changed = np.abs(with_heatmap - without).max(axis=2) > 25
    assert changed.mean() > 0.002, "toggling the heatmap changed no pixels"
    red = (with_heatmap[..., 0] > 150) & (with_heatmap[..., 1] < 110) & (with_heatmap[..., 2] < 120)
    assert (red & changed).sum() > 20, "no tumour-coloured heatmap cells drawn"

    # look at the top-left corner first, then click the largest deposit in the side list
    browser.execute_script("micromets.viewer.viewport.fitBounds(new OpenSeadragon.Rect(0, 0, 0.1, 0.1), true);")
    before = browser.execute_script("const c = micromets.viewer.viewport.getCenter(true); return [c.x, c.y];")
    browser.find_elements(By.CSS_SELECTOR, "#lesion-list li")[0].click()
    time.sleep(1.5)
    _wait(browser, LOADED)
    after = browser.execute_script("const v = micromets.viewer.viewport; const c = v.getCenter(true);"
                                   "const b = v.getBoundsNoRotate(true); return [c.x, c.y, b.x, b.y, b.width, b.height];")
    w = entry.result["l0_width"]
    largest = max(entry.result["lesions"], key=lambda les: les["diameter_mm"])
    pts = np.concatenate([np.asarray(r) for r in largest["l0_outline"]]) / w  # viewport units
    (x0, y0), (x1, y1) = pts.min(0), pts.max(0)
    assert np.hypot(after[0] - before[0], after[1] - before[1]) > 0.05, "the viewport did not move"
    assert abs(after[0] - (x0 + x1) / 2) < 0.01 and abs(after[1] - (y0 + y1) / 2) < 0.01, "not centred on it"
    bx, by, bw, bh = after[2:]
    assert bx <= x0 and by <= y0 and x1 <= bx + bw and y1 <= by + bh, "the deposit is not all in view"
    assert bw * bh <= 4 * max(x1 - x0, y1 - y0, 200 / entry.result["l0_mpp"] / w) ** 2 * 1.5 ** 2
    if largest["n_cells"]:
        _wait(browser, "return micromets.state.cells.length > 0;", timeout_s=120)
        assert "nuclei" in browser.find_element(By.ID, "cells-readout").text
        time.sleep(0.5)
    zoomed = _viewer_pixels(browser, artifacts / "viewer-3-deposit.png")
    outline = _near(zoomed, CLASS_COLOURS[largest["class"]], tol=30)
    assert outline.sum() > 200, "no outline pixels of the deposit's class colour"
    if largest["n_cells"]:
        dots = _near(zoomed, (255, 235, 59), tol=20) | _near(zoomed, (255, 152, 0), tol=20)
        assert dots.sum() > 10 * min(largest["n_cells"], 50), "nuclei dots not drawn"

    # ruler: a 300 px drag reads 300 px × µm per screen px
    browser.find_element(By.ID, "ruler-toggle").click()
    overlay = browser.find_element(By.ID, "overlay")
    ActionChains(browser).move_to_element_with_offset(overlay, -150, 0).click_and_hold() \
        .move_by_offset(300, 0).release().perform()
    um_per_px = browser.execute_script("const v = micromets.viewer.viewport; const s = micromets.state.slide;"
                                       "return s.l0_mpp * s.l0_width * v.getBoundsNoRotate(true).width /"
                                       " v.getContainerSize().x;")
    readout = browser.find_element(By.ID, "ruler-readout").text
    value, unit = readout.split()
    measured_um = float(value) * (1000 if unit == "mm" else 1)
    assert measured_um == pytest.approx(300 * um_per_px, rel=0.03)
    _viewer_pixels(browser, artifacts / "viewer-4-ruler.png")


@contextlib.contextmanager
def _showing_its_only_slide(browser, results_dir: Path):
    """The viewer of ``results_dir`` (one slide analysed on its own) served and open on that slide."""
    app = create_app(results_dir)
    [key] = app.state.catalog.slides
    with BackgroundServer(app) as base:
        browser.get(base + "/")
        _wait(browser, f"return document.querySelector('#case-list a[data-key=\"{key}\"]');").click()
        _wait(browser, f"return micromets.state.key === '{key}';")
        yield


def test_a_slide_that_is_not_lymph_node_is_flagged_in_the_top_bar(shared_data, browser, tmp_path, artifacts):
    """The bundled skin SVS analysed alone: its top bar carries the out-of-distribution warning (micromets.ood),
    with the check's reason as the tooltip."""
    from selenium.webdriver.common.by import By

    from micromets.analyze import analyze_slide

    analyze_slide(shared_data / "slides" / "cmu_small_region.svs", tmp_path)
    with _showing_its_only_slide(browser, tmp_path):
        warning = browser.find_element(By.ID, "ood-warning")
        assert warning.is_displayed() and "may not be lymph node" in warning.text
        assert "lymph node measured had" in warning.get_attribute("title")
        browser.save_screenshot(str(artifacts / "viewer-ood-topbar.png"))


def test_tissue_under_ink_is_named_in_the_top_bar(browser, tmp_path, artifacts):
    """Demo node 3 with a square of ink (conftest.write_inked_node3): the top bar says how much tissue under ink
    was not read, with the reason as the tooltip."""
    from selenium.webdriver.common.by import By

    from conftest import write_inked_node3
    from micromets.analyze import analyze_slide

    result = analyze_slide(write_inked_node3(tmp_path / "inked.tiff"), tmp_path / "out")
    with _showing_its_only_slide(browser, tmp_path / "out"):
        notice = browser.find_element(By.ID, "ink-notice")
        assert notice.is_displayed() and notice.text == f"⚠ {result['inked_mm2']:.2f} mm² under ink not read"
        assert "yours to see" in notice.get_attribute("title")
        # a slide analysed on its own lists its lesion with the confirmation it passed, as a case's slides do
        confirmed = result["lesions"][0]["confirmed_probability"]
        assert f"confirmed p {confirmed:.2f}" in browser.find_element(By.ID, "lesion-list").text
        browser.save_screenshot(str(artifacts / "viewer-ink-topbar.png"))


# ---------------------------------------------------------------- H&E and IHC of one node side by side

DEMO_NODE1 = REPO / "src" / "micromets" / "data" / "demo" / "slides" / "node1.tiff"


@pytest.fixture(scope="module")
def he_ihc_results(tmp_path_factory):
    """`micromets case` on one patient whose node 1 has the demo H&E slide (0.486 µm/px, 3292 × 2572 px) and a
    phantom IHC slide of another scan (0.4 µm/px, 3000 × 3000 px) with two ITC clusters."""
    from micromets.phantom.ihc import make_ihc_phantom, write_ihc_phantom

    folder = tmp_path_factory.mktemp("he-ihc")
    phantom = make_ihc_phantom(seed=4, size_mm=(1.2, 1.2), l0_mpp=0.4, itc_sizes=(20, 60), micro_sizes=(),
                               n_haemosiderin=2, n_anthracotic=2, min_separation_um=200)
    write_ihc_phantom(folder / "node1_ck.tiff", phantom)
    shutil.copy(DEMO_NODE1, folder / "node1.tiff")
    (folder / "manifest.csv").write_text("patient,node,slide_path,stain\np1,1,node1.tiff,he\np1,1,node1_ck.tiff,ihc\n")
    done = subprocess.run([sys.executable, "-m", "micromets", "case", str(folder / "manifest.csv"), "--out",
                           str(folder / "out")], capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, PYTHONPATH=str(REPO / "src")))
    assert done.returncode == 0, done.stderr
    return folder / "out"


def _centre_um(driver, pane: str) -> list[float]:
    """The viewport centre (x, y) in µm from the slide's level-0 origin and the µm per screen px of a pane."""
    return driver.execute_script(
        f"const p = {pane}; const v = p.viewer.viewport, s = p.slide, c = v.getCenter(true);"
        "const um = s.l0_mpp * s.l0_width;"
        "return [c.x * um, c.y * um, um / (v.getContainerSize().x * v.getZoom(true))];")


def _assert_same_place(driver):
    """Both panes centred on the same µm, at the same µm per screen px, within 1 %."""
    for _ in range(50):  # the follower moves in the leader's next animation frame
        time.sleep(0.1)
        he, ihc = _centre_um(driver, "micromets.left"), _centre_um(driver, "micromets.right")
        if np.allclose(he, ihc, rtol=0.01, atol=0):
            break
    assert he == pytest.approx(ihc, rel=0.01), f"H&E {he} vs IHC {ihc} (µm, µm, µm/px)"
    return he


@pytest.mark.browser
def test_he_and_ihc_of_a_node_side_by_side_pan_and_zoom_together_in_um(he_ihc_results, browser, artifacts):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    app = create_app(he_ihc_results)
    catalog = app.state.catalog
    by_stain = {e.result["stain"]: e for e in catalog.slides.values()}
    he, ihc = by_stain["he"], by_stain["ihc"]
    assert (he.result["l0_mpp"], ihc.result["l0_mpp"]) == (pytest.approx(0.486, abs=0.001), 0.4)
    shots = Path("/work/helper/shots/15e")
    browser.set_window_size(1600, 900)
    try:
        with BackgroundServer(app) as base:
            browser.get(f"{base}/#slide={he.key}")
            _wait(browser, f"return micromets.state.key === '{he.key}' && micromets.viewer.world.getItemCount() > 0;")
            assert not browser.find_element(By.ID, "viewer-right").is_displayed()
            single_width = browser.find_element(By.ID, "viewer").size["width"]
            toggle = browser.find_element(By.ID, "side-toggle")
            assert toggle.is_displayed()  # node 1 has an H&E and an IHC slide
            toggle.click()
            _wait(browser, f"return micromets.right.key === '{ihc.key}' && micromets.right.viewer.world.getItemCount() === 2"
                           " && micromets.right.viewer.world.getItemAt(0).getFullyLoaded();")
            assert f"side={ihc.key}" in browser.execute_script("return location.hash;")
            assert browser.find_element(By.ID, "viewer-right").is_displayed()
            assert browser.find_element(By.ID, "not-registered").text == \
                "not registered: sections are aligned at their origin"
            assert "IHC" in browser.find_element(By.ID, "pane-right").text
            assert "H&E" in browser.find_element(By.ID, "pane-left").text
            _assert_same_place(browser)

            # zoom and pan the H&E (left) viewer onto the IHC's largest cluster: the IHC viewer follows in µm
            les = max(ihc.result["lesions"], key=lambda les: les["diameter_mm"])
            pts = np.concatenate([np.asarray(r) for r in les["l0_outline"]]) * ihc.result["l0_mpp"]
            cx_um, cy_um = (pts.min(0) + pts.max(0)) / 2
            he_um = he.result["l0_mpp"] * he.result["l0_width"]
            browser.execute_script(
                "const v = micromets.viewer.viewport;"
                f"v.zoomTo(v.imageToViewportZoom(0.6)); v.panTo(new OpenSeadragon.Point({cx_um / he_um}, {cy_um / he_um}));")
            time.sleep(1.0)
            left_view = _assert_same_place(browser)
            assert left_view[:2] == pytest.approx([cx_um, cy_um], rel=0.01)
            assert left_view[2] == pytest.approx(he.result["l0_mpp"] / 0.6, rel=0.01)

            # and the reverse: drag the IHC (right) viewer with the mouse and zoom it; the H&E follows
            right_el = browser.find_element(By.ID, "viewer-right")
            ActionChains(browser).move_to_element(right_el).click_and_hold().move_by_offset(-120, -80) \
                .release().perform()
            browser.execute_script("micromets.right.viewer.viewport.zoomBy(1.5);")
            time.sleep(1.0)
            moved = _assert_same_place(browser)
            assert np.hypot(moved[0] - cx_um, moved[1] - cy_um) > 50  # it did move (about 120 px × 0.8 µm/px)
            assert moved[2] == pytest.approx(left_view[2] / 1.5, rel=0.01)
            browser.execute_script(f"micromets.right.viewer.viewport.panTo(new OpenSeadragon.Point("
                                   f"{cx_um / (ihc.result['l0_mpp'] * ihc.result['l0_width'])},"
                                   f"{cy_um / (ihc.result['l0_mpp'] * ihc.result['l0_width'])}));")
            time.sleep(1.5)
            assert _assert_same_place(browser)[:2] == pytest.approx([cx_um, cy_um], rel=0.01)
            _wait(browser, "return micromets.right.viewer.world.getItemAt(0).getFullyLoaded()"
                           " && micromets.viewer.world.getItemAt(0).getFullyLoaded();")
            time.sleep(0.5)
            shots.mkdir(parents=True, exist_ok=True)
            browser.save_screenshot(str(shots / "side-by-side.png"))
            shutil.copy(shots / "side-by-side.png", artifacts / "viewer-side-by-side.png")

            # back to the single view: the IHC pane goes, the H&E viewer takes the whole width again
            browser.find_element(By.ID, "side-toggle").click()
            _wait(browser, "return micromets.right.key === null;")
            assert "side=" not in browser.execute_script("return location.hash;")
            assert not browser.find_element(By.ID, "viewer-right").is_displayed()
            assert browser.find_element(By.ID, "viewer").size["width"] == single_width
            # the URL alone opens side by side (a link can be shared)
            browser.get(f"{base}/#slide={he.key}&side={ihc.key}")
            _wait(browser, f"return micromets.right.key === '{ihc.key}' && micromets.right.viewer.world.getItemCount() > 0;")
            assert browser.find_element(By.ID, "viewer-right").is_displayed()
    finally:
        browser.set_window_size(1280, 860)
