"""Viewer against hostile use: DNS rebinding (Host header), files named by a result.json outside the results
folder, and a burst of requests for one costly layer (computed once, bounded) — on real uvicorn servers."""

import http.client
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import numpy as np
import pytest

from micromets.viewer import create_app
from micromets.viewer.compute_cache import ComputeCache
from micromets.viewer.server import BackgroundServer

REPO = Path(__file__).resolve().parents[1]


def _result(slide_id: str, heatmap_file) -> dict:
    return {"schema": "micromets.slide-result/1", "slide_id": slide_id, "path": f"/nonexistent/{slide_id}.tiff",
            "l0_mpp": 0.25, "l0_width": 1000, "l0_height": 1000, "stain": "he", "node_class": "negative",
            "largest_deposit_mm": None, "n_lesions": 0, "lesions": [],
            "heatmap": {"file": heatmap_file, "cell_um": 32.0, "l0_origin": [0, 0], "shape": [4, 5]}}


@pytest.fixture(scope="module")
def hostile_results(tmp_path_factory):
    """A results folder whose result.json files point their heatmap inside, outside and at odd values; a
    secret heatmap lies beside (outside) it."""
    base = tmp_path_factory.mktemp("hostile")
    secret = np.full((4, 5), 0.9, np.float32)
    np.save(base / "secret.npy", secret)
    root = base / "results"
    cases = {"good": "heatmap.npy", "nested": "sub/../heatmap.npy", "absolute": str(base / "secret.npy"),
             "dotdot": "../../secret.npy", "number": 12, "list": ["heatmap.npy"], "nul": "heat\0map.npy",
             "empty": "", "folder": ".", "missing": "nothing.npy", "garbage": "garbage.npy"}
    for name, file in cases.items():
        folder = root / name
        (folder / "sub").mkdir(parents=True)
        np.save(folder / "heatmap.npy", np.linspace(0, 1, 20, dtype=np.float32).reshape(4, 5))
        (folder / "garbage.npy").write_bytes(b"\x93NUMPY not really")
        (folder / "result.json").write_text(json.dumps(_result(name, file)))
    (root / "link").mkdir()
    (root / "link" / "heatmap.npy").symlink_to(base / "secret.npy")
    (root / "link" / "result.json").write_text(json.dumps(_result("link", "heatmap.npy")))
    return root


@pytest.fixture(scope="module")
def hostile_server(hostile_results):
    app = create_app(hostile_results, allowed_hosts=["viewer.lab.example", "*.ward.example"])
    with BackgroundServer(app) as base_url:
        yield base_url


def _get(base_url: str, path: str, host: str | None) -> tuple[int, bytes]:
    addr, port = base_url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(addr, int(port), timeout=30)
    conn.putrequest("GET", path, skip_host=True)
    if host is not None:
        conn.putheader("Host", host.replace("PORT", port))
    conn.endheaders()
    resp = conn.getresponse()
    return resp.status, resp.read()


@pytest.mark.parametrize("host, status", [
    ("127.0.0.1:PORT", 200), ("localhost:PORT", 200), ("LOCALHOST", 200), ("[::1]:PORT", 200),
    ("viewer.lab.example:PORT", 200), ("pc7.ward.example", 200),
    ("evil.com", 400), ("evil.com:PORT", 400), ("localhost.evil.com:PORT", 400), ("127.0.0.1.nip.io", 400),
    ("ward.example.evil.com", 400), ("", 400), (None, 400),
])
def test_only_loopback_and_named_hosts_are_answered(hostile_server, host, status):
    """DNS rebinding: a page from evil.com whose name now resolves to 127.0.0.1 sends Host: evil.com."""
    got, body = _get(hostile_server, "/api/catalog", host)
    assert got == status, (host, got, body[:200])
    if status == 400:
        assert b"good" not in body and b"slide_id" not in body


def test_viewer_cli_refuses_a_malformed_allowed_host(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    done = subprocess.run([sys.executable, "-m", "micromets", "view", str(tmp_path), "--allow-host", "evil.com:80"],
                          capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "without port" in done.stderr


@pytest.mark.parametrize("key, status", [
    ("good", 200), ("nested", 200), ("absolute", 404), ("dotdot", 404), ("link", 404), ("number", 404),
    ("list", 404), ("nul", 404), ("empty", 404), ("folder", 404), ("missing", 404), ("garbage", 404),
])
def test_heatmap_files_outside_the_results_folder_are_never_served(hostile_server, key, status):
    got, body = _get(hostile_server, f"/api/slides/{key}/heatmap.png", "127.0.0.1")
    assert got == status, (key, got, body[:300])
    assert b"Traceback" not in body and b"Internal Server Error" not in body


def test_compute_cache_is_bounded_and_shares_one_failure():
    cache = ComputeCache(max_items=2, max_concurrent=1)
    for key in "abc":
        assert cache.get(key, lambda key=key: key * 2) == key * 2
    assert len(cache) == 2 and cache.computed == 3
    assert cache.get("c", lambda: "recomputed") == "cc"  # still cached
    assert cache.get("a", lambda: "recomputed") == "recomputed"  # evicted, least recently used

    gate = threading.Event()
    calls = []

    def fail():
        calls.append(1)
        gate.wait(10)
        raise OSError("slide vanished")

    errors = []

    def ask():
        try:
            cache.get("x", fail)
        except OSError as err:
            errors.append(err)

    threads = [threading.Thread(target=ask) for _ in range(8)]
    for t in threads:
        t.start()
    while not calls:
        pass
    gate.set()
    for t in threads:
        t.join(10)
    assert len(calls) == 1 and len(errors) == 8  # one computation, its error given to every waiter
    assert cache.get("x", lambda: "ok") == "ok"  # a failure is not cached


def test_forty_concurrent_requests_for_one_cell_layer_compute_it_once(demo_output):
    """Issue 16: 40 concurrent requests recomputed one lesion's cells 40 times (17 s each, 2.1 GB peak)."""
    app = create_app(demo_output)
    key, lesion = max(((k, les) for k, entry in app.state.catalog.slides.items() for les in entry.result["lesions"]
                       if les["n_cells"] is not None), key=lambda kl: kl[1]["diameter_mm"])
    url = f"/api/slides/{key}/lesions/{lesion['id']}/cells.geojson"
    with BackgroundServer(app) as base_url:
        bodies, lock = [], threading.Lock()
        start = threading.Barrier(40)

        def client():
            start.wait()
            resp = httpx.get(base_url + url, timeout=300)
            with lock:
                bodies.append((resp.status_code, resp.content))

        threads = [threading.Thread(target=client) for _ in range(40)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
    assert [status for status, _ in bodies] == [200] * 40
    assert len({body for _, body in bodies}) == 1
    assert app.state.cells.computed == 1
    assert json.loads(bodies[0][1])["properties"]["n_cells"] > 0


def test_review_api_answers_only_named_hosts_and_never_writes_through_a_link(demo_output, tmp_path):
    """The review endpoints (issue 15b) sit behind the same Host check, and an audit log that is a link out of
    the results folder is neither read nor appended to."""
    import shutil

    root = tmp_path / "out"
    shutil.copytree(demo_output, root)
    outside = tmp_path / "elsewhere.jsonl"
    outside.write_text("")
    app = create_app(root)
    (case,) = app.state.catalog.case_dirs
    event = json.dumps({"by": "Dr Test", "action": "comment", "slide": "node1", "text": "x"})
    with BackgroundServer(app) as base_url:
        assert _get(base_url, f"/api/cases/{case}/review", "evil.com")[0] == 400
        assert _get(base_url, f"/api/cases/{case}/review", "127.0.0.1")[0] == 200
        (root / case / "review.jsonl").symlink_to(outside)
        for path in (f"/api/cases/{case}/review", f"/api/cases/{case}/review.csv", f"/api/cases/{case}/report"):
            assert _get(base_url, path, "127.0.0.1")[0] == 404, path
        resp = httpx.post(f"{base_url}/api/cases/{case}/review", content=event, timeout=60,
                          headers={"Content-Type": "application/json"})
        assert resp.status_code == 404
    assert outside.read_text() == ""


def test_a_deeply_nested_or_broken_json_file_is_listed_as_unreadable_and_the_rest_served(tmp_path):
    """One result.json or case.json nested too deeply for the parser (RecursionError), not JSON, or a case whose
    nodes are not objects: the viewer still starts, lists that file as unreadable, and serves the others."""
    root = tmp_path / "results"
    deep = "[" * 100_000 + "]" * 100_000
    for name, text in {"good": json.dumps(_result("good", "heatmap.npy")), "deep": deep, "broken": "{not json"}.items():
        (root / name).mkdir(parents=True)
        (root / name / "result.json").write_text(text)
    np.save(root / "good" / "heatmap.npy", np.linspace(0, 1, 20, dtype=np.float32).reshape(4, 5))
    for name, text in {"p-deep": '{"schema": "micromets.case/1", "nodes": ' + deep + "}",
                       "p-broken": '{"schema": "micromets.case/1", "nodes": [',
                       "p-shape": json.dumps({"schema": "micromets.case/1", "patient": "x", "nodes": [1, {}]})}.items():
        (root / name).mkdir()
        (root / name / "case.json").write_text(text)
    with BackgroundServer(create_app(root)) as base_url:
        got, body = _get(base_url, "/api/catalog", "127.0.0.1")
        assert got == 200, body[:300]
        catalog = json.loads(body)
        assert list(catalog["slides"]) == ["good"]
        assert sorted(catalog["unreadable"]) == ["broken/result.json", "deep/result.json", "p-broken/case.json",
                                                 "p-deep/case.json", "p-shape/case.json"]
        assert "nested too deeply" in catalog["unreadable"]["deep/result.json"]
        for path in ("/api/slides/good", "/api/slides/good/heatmap.png", "/api/slides/good/lesions.geojson"):
            got, body = _get(base_url, path, "127.0.0.1")
            assert got == 200, (path, body[:300])
