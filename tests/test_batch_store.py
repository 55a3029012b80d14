"""Content ids (micromets.batch.ident) and the SQLite results store (micromets.batch.store)."""

import os
import signal
import sqlite3
import subprocess
import sys
import threading

import pytest

from micromets.batch.ident import SAMPLE_BYTES, slide_content_id
from micromets.batch.store import open_store
from micromets.errors import MicrometsError


def _write(path, data: bytes, mtime_ns: int | None = None):
    path.write_bytes(data)
    if mtime_ns is not None:
        os.utime(path, ns=(mtime_ns, mtime_ns))
    return path


# ---- identity -------------------------------------------------------------------------------------------------


def test_rename_keeps_id_and_rewrite_changes_it(tmp_path):
    a = _write(tmp_path / "a.svs", os.urandom(3 * SAMPLE_BYTES + 17), 1_700_000_000_000_000_000)
    quick, full = slide_content_id(a), slide_content_id(a, "full")
    assert quick.startswith("quick:") and full.startswith("sha256:")
    b = tmp_path / "sub" / "renamed.tif"
    b.parent.mkdir()
    a.rename(b)
    assert slide_content_id(b) == quick and slide_content_id(b, "full") == full
    data = bytearray(b.read_bytes())
    data[5] ^= 0xFF
    _write(b, bytes(data), 1_700_000_000_000_000_000)  # same size and mtime: the head sample sees the change
    assert slide_content_id(b) != quick and slide_content_id(b, "full") != full


def test_quick_id_sees_tail_mtime_and_size_but_not_the_unsampled_middle(tmp_path):
    mtime = 1_600_000_000_000_000_000
    data = bytearray(os.urandom(4 * SAMPLE_BYTES))
    p = _write(tmp_path / "s.svs", bytes(data), mtime)
    base_quick, base_full = slide_content_id(p), slide_content_id(p, "full")
    data[-1] ^= 1  # tail sample
    _write(p, bytes(data), mtime)
    assert slide_content_id(p) != base_quick
    data[-1] ^= 1
    data[2 * SAMPLE_BYTES] ^= 1  # middle, outside both samples: documented blind spot of the quick scheme
    _write(p, bytes(data), mtime)
    assert slide_content_id(p) == base_quick
    assert slide_content_id(p, "full") != base_full
    data[2 * SAMPLE_BYTES] ^= 1
    _write(p, bytes(data), mtime + 1)  # touched: quick id changes (recompute once), full id does not
    assert slide_content_id(p) != base_quick and slide_content_id(p, "full") == base_full
    _write(p, bytes(data) + b"x", mtime)
    assert slide_content_id(p) != base_quick


def test_small_files_hash_whole_content(tmp_path):
    p = _write(tmp_path / "tiny.tif", b"", 0)
    q = _write(tmp_path / "tiny2.tif", b"\0", 0)
    assert slide_content_id(p) != slide_content_id(q)


def test_non_regular_inputs_raise_without_blocking(tmp_path):
    (tmp_path / "folder.svs").mkdir()
    with pytest.raises(MicrometsError, match="is a directory"):
        slide_content_id(tmp_path / "folder.svs")
    os.mkfifo(tmp_path / "pipe.svs")
    outcome = []
    reader = threading.Thread(target=lambda: outcome.append(pytest.raises(MicrometsError, slide_content_id,
                                                                         tmp_path / "pipe.svs")), daemon=True)
    reader.start()
    reader.join(5)
    assert not reader.is_alive(), "opening a FIFO named like a slide blocked"
    assert "not a regular file" in str(outcome[0].value)
    with pytest.raises(MicrometsError, match="cannot read"):
        slide_content_id(tmp_path / "missing.svs")
    os.symlink(tmp_path / "nowhere.svs", tmp_path / "dangling.svs")
    with pytest.raises(MicrometsError, match="dangling.svs"):
        slide_content_id(tmp_path / "dangling.svs")
    with pytest.raises(MicrometsError, match="identity scheme"):
        slide_content_id(tmp_path / "x", "md5")


# ---- store ----------------------------------------------------------------------------------------------------

RESULT = {
    "schema": "micromets.slide-result/1", "slide_id": "node1", "l0_mpp": 0.25, "stain": "he",
    "tissue_area_mm2": 12.5, "threshold": 0.5, "node_class": "micro", "largest_deposit_mm": 0.9, "n_lesions": 2,
    "lesions": [{"id": 1, "class": "micro", "diameter_mm": 0.9, "area_mm2": 0.3, "ellipse_major_mm": 0.95,
                 "max_probability": 0.97, "n_cells": None},
                {"id": 2, "class": "itc", "diameter_mm": 0.1, "area_mm2": 0.005, "ellipse_major_mm": 0.12,
                 "max_probability": 0.7, "n_cells": 30}],
}


def _store(tmp_path):
    return open_store(tmp_path / "r.sqlite")


def test_schema_wal_and_one_row_per_key(tmp_path):
    with _store(tmp_path) as store:
        run = store.begin_run({"model_name": "m", "model_version": "1"}, "k1", "0.1.0", "in-process", 2)
        store.record_result(run, "quick:aa", "k1", "/s/node1.tif", "/o/node1", RESULT, 0.97, 1.5)
        store.record_result(run, "quick:aa", "k1", "/s/node1.tif", "/o/node1", RESULT, 0.98, 1.4)  # --force
        store.record_result(run, "quick:aa", "k2", "/s/node1.tif", "/o/node1~x", RESULT, 0.5, 1.4)  # other model
        store.finish_run(run, 3, 0, 0)
        slides = store.slides()
        assert [(s["settings_key"], s["max_probability"]) for s in slides] == [("k1", 0.98), ("k2", 0.5)]
        assert len(store.lesions()) == 4
        assert set(store.done_results()) == {("quick:aa", "k1"), ("quick:aa", "k2")}
        assert store.result("quick:aa", "k1")["largest_deposit_mm"] == 0.9
        assert store.runs()[0]["n_done"] == 3 and store.runs()[0]["finished_utc"]
        assert store.integrity_ok()
    raw = sqlite3.connect(tmp_path / "r.sqlite")
    assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    raw.close()


def test_changed_file_supersedes_and_failures_never_replace_done(tmp_path):
    with _store(tmp_path) as store:
        run = store.begin_run({}, "k", "0.1.0", "in-process", 1)
        store.record_result(run, "quick:old", "k", "/s/a.svs", "/o/a", RESULT, 0.9, 1.0)
        store.record_failure(run, "quick:old", "k", "/s/a.svs", "transient", 0.1)
        assert [s["status"] for s in store.slides()] == ["done"]
        store.record_result(run, "quick:new", "k", "/s/a.svs", "/o/a", {**RESULT, "lesions": []}, 0.1, 1.0)
        assert [(s["content_id"], s["status"]) for s in store.slides()] == [("quick:new", "done")]
        assert store.lesions() == []  # the old version's lesions went with it (foreign key cascade)
        store.record_failure(run, "path:/s/b.svs", "k", "/s/b.svs", "/s/b.svs: is a directory", 0.0)
        store.record_failure(run, "path:/s/b.svs", "k", "/s/b.svs", "/s/b.svs: no such file", 0.0)
        failed = store.slides(status="failed")
        assert len(failed) == 1 and failed[0]["error"] == "/s/b.svs: no such file"
        store.touch_path("quick:new", "k", "/s/renamed.svs")
        assert store.slides(status="done")[0]["path"] == "/s/renamed.svs"


def test_cases_nodes_and_patients(tmp_path):
    case = {"schema": "micromets.case/1", "patient": "p1", "stage_mode": "camelyon17", "pn_stage": "pN1mi",
            "stage_reason": "one micro", "nodes": [
                {"node": "1", "node_class": "micro", "decided_by": "slide n1 (he)", "largest_deposit_mm": 0.9,
                 "osna_copies_per_ul": None, "slides": ["n1"]},
                {"node": "2", "node_class": "negative", "decided_by": "slide n2 (he)", "largest_deposit_mm": 0.0,
                 "osna_copies_per_ul": 100.0, "slides": ["n2"]}]}
    with _store(tmp_path) as store:
        store.record_case(1, "k", case)
        store.record_case(1, "k", {**case, "nodes": case["nodes"][:1]})
        assert [n["node"] for n in store.nodes()] == ["1"]
        assert [(p["patient"], p["pn_stage"]) for p in store.patients()] == [("p1", "pN1mi")]


def test_bad_store_locations(tmp_path):
    with pytest.raises(MicrometsError, match="not implemented"):
        open_store("postgresql://db.example/micromets")
    with pytest.raises(MicrometsError, match="unknown store URL"):
        open_store("mysql://x/y")
    with pytest.raises(MicrometsError, match="is a directory"):
        open_store(tmp_path)
    (tmp_path / "junk.sqlite").write_bytes(os.urandom(4096))
    with pytest.raises(MicrometsError, match="not a usable SQLite database"):
        open_store(tmp_path / "junk.sqlite")
    other = sqlite3.connect(tmp_path / "other.sqlite")
    other.executescript("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);"
                        "INSERT INTO meta VALUES ('schema', 'someone-else/9');")
    other.close()
    with pytest.raises(MicrometsError, match="someone-else/9"):
        open_store(tmp_path / "other.sqlite")
    with open_store(f"sqlite:///{tmp_path / 'url.sqlite'}") as store:
        assert store.path == tmp_path / "url.sqlite"


_KILL_MID_TRANSACTION = """
import os, signal, sys
from micromets.batch.store import open_store
store = open_store(sys.argv[1])
run = store.begin_run({}, "k", "0.1.0", "in-process", 2)
store.record_result(run, "quick:first", "k", "/s/first.svs", "/o/first", {"slide_id": "first", "lesions": []}, 0.1, 1)
store._db.execute("BEGIN IMMEDIATE")
store._db.execute("INSERT INTO slides (content_id, settings_key, status, path, finished_utc)"
                  " VALUES ('quick:second', 'k', 'done', '/s/second.svs', 'now')")
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_sigkill_inside_a_transaction_leaves_the_previous_state(tmp_path):
    db = tmp_path / "r.sqlite"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run([sys.executable, "-c", _KILL_MID_TRANSACTION, str(db)], env=env, timeout=60)
    assert proc.returncode == -signal.SIGKILL
    with open_store(db) as store:
        assert store.integrity_ok()
        assert [s["content_id"] for s in store.slides()] == ["quick:first"]
