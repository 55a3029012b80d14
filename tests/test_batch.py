"""micromets batch: inputs, resume by content id, atomic publication, Dask LocalCluster, cases, results/threshold."""

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from micromets.batch.run import discover_inputs, local_cluster, run_batch
from micromets.batch.speedup import measure_speedup
from micromets.batch.store import open_store
from micromets.batch.triage import read_labels, safe_negative_threshold, select_slides
from micromets.cli import app
from micromets.errors import MicrometsError
from micromets.phantom.pyramid import write_pyramid

C17_MPP = 0.24  # µm/px of the CAMELYON17 tiles (data README)


def write_tile_slide(path: Path, tile: Path, l0_x: int = 0, l0_y: int = 0, side_px: int = 1024,
                     mpp: float | None = C17_MPP) -> Path:
    """A real-tissue pyramidal TIFF: a `side_px` crop of a real CAMELYON17 tile, at its µm/px (None: no
    resolution tags)."""
    rgb = np.asarray(Image.open(tile).convert("RGB"))[l0_y:l0_y + side_px, l0_x:l0_x + side_px]
    path.parent.mkdir(parents=True, exist_ok=True)
    write_pyramid(path, rgb.shape[1], rgb.shape[0], mpp or 1.0, lambda x, y, w, h: rgb[y:y + h, x:x + w])
    if mpp is None:  # strip the resolution the writer always sets
        import tifffile

        with tifffile.TiffFile(path, mode="r+b") as tif:
            for page in tif.pages:
                page.tags["ResolutionUnit"].overwrite(1)  # 1 = no absolute unit: OpenSlide reports no mpp
    return path


def make_slides(folder: Path, shared_data: Path, n: int = 3) -> list[Path]:
    """`n` small real-tissue slides from different CAMELYON17 centres (`n` <= 5)."""
    tiles = sorted((shared_data / "camelyon17_tiles").glob("*.jpeg"))[:n]
    folder.mkdir(parents=True, exist_ok=True)
    return [write_tile_slide(folder / f"{tile.stem.split('_patient_')[1]}.tif", tile, 512, 512) for tile in tiles]


def rows_by_path(db: Path) -> dict[str, list[dict]]:
    with open_store(db) as store:
        rows = store.slides()
    grouped: dict[str, list[dict]] = {}
    for row in rows:
        grouped.setdefault(row["path"], []).append(row)
    return grouped


@pytest.fixture(scope="module")
def slides(tmp_path_factory, shared_data) -> list[Path]:
    return make_slides(tmp_path_factory.mktemp("slides"), shared_data)


def test_discover_inputs(tmp_path):
    (tmp_path / "a" / "deep").mkdir(parents=True)
    for name in ("a/x.svs", "a/deep/y.TIFF", "a/notes.txt", "b.ndpi"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "a" / "dir.tif").mkdir()
    found = [p.path.relative_to(tmp_path).as_posix() for p in discover_inputs([tmp_path / "a"])]
    assert found == ["a/x.svs", "a/dir.tif", "a/deep/y.TIFF"]
    found = discover_inputs([str(tmp_path / "**" / "*.svs"), tmp_path / "b.ndpi", tmp_path / "a" / "x.svs"])
    assert [p.path.name for p in found] == ["x.svs", "b.ndpi", "x.svs"] and all(p.path.is_absolute() for p in found)
    with pytest.raises(MicrometsError, match="no such file"):
        discover_inputs([tmp_path / "missing"])
    with pytest.raises(MicrometsError, match="contains no slide"):
        discover_inputs([str(tmp_path / "*.mrxs")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(MicrometsError, match="contains no slide"):
        discover_inputs([tmp_path / "empty"])


def test_resume_rename_change_force_and_collisions(tmp_path, slides, shared_data):
    src = tmp_path / "in"
    shutil.copytree(slides[0].parent, src)
    out, db = tmp_path / "out", tmp_path / "out" / "results.sqlite"
    first = run_batch([src, shared_data / "slides" / "cmu_small_region.svs"], out)
    assert (first.n_done, first.n_failed, first.n_skipped) == (4, 0, 0)
    for row in first.rows:
        folder = Path(row["out_dir"])
        assert folder.parent == out and folder.name == Path(row["path"]).stem
        assert {p.name for p in folder.iterdir()} == {"result.json", "heatmap.npy", "heatmap.tif", "heatmap.png",
                                                   "lesions.geojson", "lesions.xml", "cells.geojson"}
        result = json.loads((folder / "result.json").read_text())
        assert row["max_probability"] == pytest.approx(float(np.load(folder / "heatmap.npy").max()))
        assert result["node_class"] == row["node_class"]
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == sorted(
        [Path(r["path"]).stem for r in first.rows] + ["results.sqlite"])

    again = run_batch([src, shared_data / "slides" / "cmu_small_region.svs"], out)
    assert (again.n_done, again.n_skipped) == (0, 4)

    renamed = src / "renamed_copy.tif"
    os.rename(src / slides[0].name, renamed)  # same content, new name: not recomputed, store follows the file
    changed = src / slides[1].name
    write_tile_slide(changed, sorted((shared_data / "camelyon17_tiles").glob("*.jpeg"))[1], 0, 0)  # new content
    third = run_batch([src], out)
    status = {Path(r["path"]).name: r["status"] for r in third.rows}
    assert status == {"renamed_copy.tif": "skipped", changed.name: "done", slides[2].name: "skipped"}
    grouped = rows_by_path(db)
    assert str(renamed) in grouped and str(src / slides[0].name) not in grouped
    assert all(len(rows) == 1 for rows in grouped.values()) and len(grouped) == 4

    other = tmp_path / "elsewhere" / slides[2].name  # same file name, other content: its own folder
    write_tile_slide(other, sorted((shared_data / "camelyon17_tiles").glob("*.jpeg"))[4], 0, 1024)
    fourth = run_batch([other], out)
    assert Path(fourth.rows[0]["out_dir"]).name.startswith(f"{other.stem}~")

    stamp = (out / changed.stem / "result.json").stat().st_mtime_ns
    forced = run_batch([src], out, force=True)
    assert forced.n_done == 3 and (out / changed.stem / "result.json").stat().st_mtime_ns != stamp
    grouped = rows_by_path(db)
    assert len(grouped) == 5 and all(len(rows) == 1 and rows[0]["status"] == "done" for rows in grouped.values())
    with open_store(db) as store:
        assert store.integrity_ok()
        assert [r["n_done"] for r in store.runs()] == [4, 0, 1, 1, 3]
        assert len(store.lesions()) == sum(r["n_lesions"] for r in store.slides())
    assert not any((out / ".staging").iterdir()) and not (out / ".trash").exists() or not any(
        (out / ".trash").iterdir())


def test_two_worker_local_cluster_matches_in_process(tmp_path, slides):
    serial = run_batch(slides, tmp_path / "serial")
    dask = run_batch(slides, tmp_path / "dask", workers=2)
    assert dask.n_done == serial.n_done == len(slides)
    for a, b in zip(serial.rows, dask.rows):
        assert (a["node_class"], a["max_probability"]) == (b["node_class"], b["max_probability"])
        assert json.loads(Path(a["out_dir"], "result.json").read_text())["lesions"] == json.loads(
            Path(b["out_dir"], "result.json").read_text())["lesions"]
    with open_store(tmp_path / "dask" / "results.sqlite") as store:
        assert store.runs()[0]["executor"] == "dask-local:2"


def test_dask_runs_the_largest_file_first(tmp_path, shared_data):
    tile = sorted((shared_data / "camelyon17_tiles").glob("*.jpeg"))[0]
    paths = [write_tile_slide(tmp_path / "in" / f"{name}.tif", tile, side_px=side)
             for name, side in (("small", 640), ("large", 1024), ("mid", 832))]
    assert paths[1].stat().st_size > paths[2].stat().st_size > paths[0].stat().st_size
    finished = []
    summary = run_batch(paths, tmp_path / "out", workers=1,
                        on_event=lambda kind, row: finished.append(Path(row["path"]).stem) if kind == "done" else None)
    assert finished == ["large", "mid", "small"]  # one worker: the order in which the slides were run
    assert [Path(row["path"]).stem for row in summary.rows] == ["small", "large", "mid"]  # rows keep input order


def test_local_cluster_spends_no_cpu_on_profiling(tmp_path):
    import dask
    from distributed import Client

    client_profiles = dask.config.get("distributed.worker.profile.enabled")
    with local_cluster(1) as cluster, Client(cluster) as client:
        [(callbacks, tick_ms, memory_s, environ)] = client.run(lambda dask_worker: (
            sorted(dask_worker.periodic_callbacks), dask_worker.periodic_callbacks["tick"].callback_time,
            dask_worker.memory_manager.memory_monitor_interval, dict(os.environ))).values()
        [nanny] = cluster.workers.values()
        assert "profile" not in callbacks and "heartbeat" in callbacks  # in the spawned worker process
        assert tick_ms == cluster.scheduler.periodic_callbacks["tick"].callback_time == 500
        assert memory_s == nanny.memory_manager.memory_monitor_interval == 0.5
        assert cluster.scheduler.WORKER_SATURATION == 1.0  # a worker gets its next slide when it is free
        # glibc keeps its adaptive mmap threshold (no MALLOC_TRIM_THRESHOLD_); BLAS stays single-threaded
        assert "MALLOC_TRIM_THRESHOLD_" not in environ and environ["OPENBLAS_NUM_THREADS"] == "1"
    assert dask.config.get("distributed.worker.profile.enabled") == client_profiles  # this process's config unchanged


def test_speedup_report_splits_the_cpu_of_client_and_worker_threads(tmp_path, slides):
    report = measure_speedup(slides[:2], tmp_path, worker_counts=(1,), rounds=2)
    run, again = report["runs"]
    assert (run["round"], again["round"]) == (0, 1) and report["speedup_wall_median"] == {"1": 1.0}
    [worker] = run["worker_threads"]  # one spawned worker process (not multiprocessing's resource tracker)
    assert worker["busiest_thread_cpu_s"] > 0 and worker["other_threads_cpu_s"] > 0  # slides; Dask's event loop
    assert run["worker_cpu_s"] >= worker["busiest_thread_cpu_s"] + worker["other_threads_cpu_s"]  # sampled <= exact
    assert run["client_cpu_s"] > 0 and run["speedup_compute"] == 1.0
    assert all((tmp_path / "workers-1" / slide.stem / "result.json").is_file() for slide in slides[:2])


def test_fast_mode_is_its_own_setting(tmp_path, slides):
    out = tmp_path / "out"
    assert run_batch(slides, out).n_done == len(slides)
    fast = run_batch(slides, out, mode="fast")  # another mode (and a screen model): recomputed, not skipped
    assert fast.n_done == len(slides)
    for row in fast.rows:
        result = json.loads(Path(row["out_dir"], "result.json").read_text())
        assert result["mode"] == "fast" and result["model"]["screen"]["name"]
    assert run_batch(slides, out, mode="fast").n_skipped == len(slides)


def test_existing_scheduler(tmp_path, slides):
    from distributed import LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        summary = run_batch(slides[:1], tmp_path / "out", scheduler=cluster.scheduler_address)
    assert summary.n_done == 1
    with open_store(tmp_path / "out" / "results.sqlite") as store:
        assert store.runs()[0]["executor"] == f"dask:{cluster.scheduler_address}"


@pytest.mark.slow
def test_unreachable_scheduler_is_a_clear_error(tmp_path, slides):
    with pytest.raises(MicrometsError, match="cannot connect"):
        run_batch(slides[:1], tmp_path / "out", scheduler="tcp://127.0.0.1:9")


def test_manifest_batch_stages_patients(tmp_path, slides):
    manifest = tmp_path / "cases.csv"
    manifest.write_text("patient,node,slide_path,stain,osna_copies_per_ul\n"
                        f"p1,1,{slides[0]},he,\n"
                        f"p1,2,{slides[1]},,\n"
                        "p1,3,,,6000\n"
                        f"p2,1,{slides[2]},,\n"
                        f"p2,2,{tmp_path / 'missing.tif'},,\n")
    summary = run_batch([manifest], tmp_path / "out")
    assert (summary.n_done, summary.n_failed) == (3, 1)
    with open_store(tmp_path / "out" / "results.sqlite") as store:
        patients = {p["patient"]: p for p in store.patients()}
        nodes = {(n["patient"], n["node"]): n for n in store.nodes()}
    assert set(patients) == {"p1", "p2"} and set(nodes) == {("p1", "1"), ("p1", "2"), ("p1", "3"), ("p2", "1")}
    assert nodes[("p1", "3")]["node_class"] == "macro"  # OSNA > 5,000 copies/µL
    assert patients["p1"]["pn_stage"] in ("pN1", "pN2")
    case = json.loads(sqlite3.connect(tmp_path / "out" / "results.sqlite").execute(
        "SELECT case_json FROM patients WHERE patient = 'p2'").fetchone()[0])
    assert not case["complete"] and case["failed_slides"][0]["path"].endswith("missing.tif")


def test_safe_negative_threshold_boundaries():
    scores = np.array([0.9, 0.7, 0.4, 0.4, 0.2, 0.1, 0.05])
    positive = np.array([True, True, True, False, False, False, False])
    full = safe_negative_threshold(scores, positive, 1.0)
    assert full.threshold == 0.4  # lowest positive; the negative tied at 0.4 is flagged, not spared
    assert (full.sensitivity, full.n_spared, full.specificity) == (1.0, 3, 0.75)
    assert full.spared_share == pytest.approx(3 / 7)
    two_thirds = safe_negative_threshold(scores, positive, 2 / 3)
    assert two_thirds.threshold == 0.7 and two_thirds.sensitivity == pytest.approx(2 / 3)
    assert safe_negative_threshold(scores, positive, 0.67).threshold == 0.4  # 0.67 × 3 → 3 positives needed
    with pytest.raises(MicrometsError, match="no positive"):
        safe_negative_threshold(scores, np.zeros(7, bool))
    with pytest.raises(MicrometsError, match="target sensitivity"):
        safe_negative_threshold(scores, positive, 0.0)
    with pytest.raises(MicrometsError, match="finite"):
        safe_negative_threshold(np.array([np.nan, 1.0]), np.array([True, False]))


def test_read_labels_on_the_camelyon17_reference(shared_data, tmp_path):
    labels = read_labels(shared_data / "camelyon17" / "stage_labels_patients_000-019.csv")
    assert len(labels) == 100 and "patient_000_node_0" in labels and not any(k.endswith(".zip") for k in labels)
    strict = read_labels(shared_data / "camelyon17" / "stage_labels_patients_000-019.csv", ("micro", "macro"))
    assert sum(strict.values()) < sum(labels.values())
    bad = tmp_path / "bad.csv"
    bad.write_text("slide,label\na.tif,maybe\n")
    with pytest.raises(MicrometsError, match=r"bad.csv:2: label 'maybe'"):
        read_labels(bad)
    bad.write_text("slide,label\na.tif,negative\na.svs,micro\n")
    with pytest.raises(MicrometsError, match="labelled twice"):
        read_labels(bad)


def test_results_and_threshold_commands(tmp_path, slides):
    out = tmp_path / "out"
    run_batch(slides, out)
    db = str(out / "results.sqlite")
    runner = CliRunner()
    done = runner.invoke(app, ["results", "--db", db, "--format", "json"])
    assert done.exit_code == 0, done.output
    rows = json.loads(done.output)
    assert len(rows) == 3 and [r["max_probability"] for r in rows] == sorted(
        (r["max_probability"] for r in rows), reverse=True)
    worklist = runner.invoke(app, ["results", "--db", db, "--level", "worklist", "--format", "csv"])
    lines = worklist.output.strip().splitlines()
    assert lines[0].startswith("rank,slide_id,max_probability") and lines[1].startswith("1,")
    cutoff = rows[1]["max_probability"]
    kept = runner.invoke(app, ["results", "--db", db, "--format", "json", "--min-probability", str(cutoff)])
    assert [r["slide_id"] for r in json.loads(kept.output)] == [r["slide_id"] for r in rows[:2]]
    assert select_slides(rows, classes=("nonexistent",)) == []
    table = runner.invoke(app, ["results", "--db", db, "--level", "runs"])
    assert table.exit_code == 0 and "in-process" in table.output and table.output.splitlines()[0].strip() == "1 run"

    labels = tmp_path / "labels.csv"
    labels.write_text("slide,label\n" + "".join(f"{r['slide_id']}.tif,{lab}\n"
                                                for r, lab in zip(rows, ("micro", "negative", "negative"))))
    picked = runner.invoke(app, ["threshold", "--db", db, "--labels", str(labels), "--format", "json"])
    assert picked.exit_code == 0, picked.output
    report = json.loads(picked.output)
    assert report["threshold"] == rows[0]["max_probability"] and report["sensitivity"] == 1.0
    assert report["n_spared"] == sum(r["max_probability"] < rows[0]["max_probability"] for r in rows)
    missing = runner.invoke(app, ["results", "--db", str(tmp_path / "nope.sqlite")])
    assert missing.exit_code != 0 and "no such results store" in str(missing.exception)


def test_batch_cases_open_in_report_and_view(tmp_path):
    """A batch over a case manifest writes OUT/<patient>/case.json as `micromets case` does: `micromets report`
    renders the patient's report from it and the viewer's catalogue groups the slides by patient and node."""
    from micromets.case import read_manifest
    from micromets.viewer import create_app
    from micromets.viewer.server import BackgroundServer

    manifest = Path(__file__).resolve().parents[1] / "src" / "micromets" / "data" / "demo" / "manifest.csv"
    out = tmp_path / "out"
    got = CliRunner().invoke(app, ["batch", str(manifest), "--out", str(out), "--workers", "0"])
    assert got.exit_code == 0, got.output
    patient_dir = out / "demo_patient"
    case = json.loads((patient_dir / "case.json").read_text())
    assert [(n["node"], n["slides"]) for n in case["nodes"]] == [("1", ["node1"]), ("2", ["node2"]), ("3", ["node3"])]
    assert [n["ood"] for n in case["nodes"]] == [{f"node{i}": {"flagged": False, "reasons": []}} for i in (1, 2, 3)]
    got = CliRunner().invoke(app, ["report", str(patient_dir), "--no-pdf"])
    assert got.exit_code == 0, got.output
    html = (patient_dir / "report.html").read_text()
    assert "demo_patient" in html and case["pn_stage"] in html
    with BackgroundServer(create_app(out)) as base_url:
        catalog = httpx.get(f"{base_url}/api/catalog").json()
    cases = {c["patient"]: c for c in catalog["cases"]}
    assert set(cases) == {"demo_patient"}  # no "slides analysed on their own" group
    nodes = {n["node"]: [catalog["slides"][k]["slide_id"] for k in n["slides"]] for n in cases["demo_patient"]["nodes"]}
    assert nodes == {row.node: [row.slide_path.stem] for row in read_manifest(manifest)}


def test_batch_case_names_a_slide_done_before_outside_the_patient_folder(tmp_path, slides):
    """A slide analysed by an earlier batch without a manifest keeps its folder; the case names it relative to
    the patient folder and the viewer still places it under its patient."""
    from micromets.viewer.catalog import build_catalog

    out = tmp_path / "out"
    run_batch(slides[:1], out)
    manifest = tmp_path / "cases.csv"
    manifest.write_text(f"patient,node,slide_path\np1,1,{slides[0]}\np1,2,{slides[1]}\n")
    summary = run_batch([manifest], out)
    assert (summary.n_done, summary.n_skipped) == (1, 1)
    case = json.loads((out / "p1" / "case.json").read_text())
    assert [n["slides"] for n in case["nodes"]] == [[f"../{slides[0].stem}"], [slides[1].stem]]
    catalog = build_catalog(out)
    assert {(e.patient, e.node) for e in catalog.slides.values()} == {("p1", "1"), ("p1", "2")}


def test_batch_rule_and_its_old_spelling_stage_alike(tmp_path, slides):
    """--rule is the staging rule (as in case and stage); the old --stage-mode still works. The second and third
    runs skip the slide and only restage the patient."""
    manifest = tmp_path / "cases.csv"
    manifest.write_text(f"patient,node,slide_path\np1,1,{slides[0]}\n")
    out = tmp_path / "out"
    staged = []
    for args in (["--stage-mode", "ajcc8"], ["--rule", "camelyon17"], ["--rule", "ajcc8"]):
        got = CliRunner().invoke(app, ["batch", str(manifest), "--out", str(out), "--workers", "0", *args])
        assert got.exit_code == 0, got.output
        staged.append(json.loads((out / "p1" / "case.json").read_text()))
    assert [c["stage_mode"] for c in staged] == ["ajcc8", "camelyon17", "ajcc8"] and staged[0] == staged[2]


def test_the_batch_progress_line_fits_80_columns_whole(tmp_path):
    """At 80 columns the elapsed time was cut to '0:00:…'."""
    slide = Path(__file__).parents[1] / "src" / "micromets" / "data" / "demo" / "slides" / "node1.tiff"
    env = dict(os.environ, COLUMNS="80", PYTHONPATH=str(Path(__file__).parents[1] / "src"))
    done = subprocess.run([sys.executable, "-m", "micromets", "batch", str(slide), "--out",
                           str(tmp_path / "out")], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    bar = next(line for line in done.stderr.splitlines() if line.startswith("batch "))
    assert "…" not in bar and len(bar) <= 80 and "1/1" in bar and "1 done" in bar
