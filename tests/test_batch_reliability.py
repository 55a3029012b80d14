"""Reliability of `micromets batch`: bad files, no permission, read-only and full disks, SIGKILL at random moments.

Root ignores permission bits, so "unreadable file" and "read-only folder" are exercised by running the real CLI
without the capabilities that let root override them (``setpriv`` drops CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH:
root then obeys the owner bits like any user), and by a read-only tmpfs mount when this process may mount.
Tests marked ``slow`` run with ``make stress``.
"""

import fcntl
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from micromets.batch.run import LOCK, run_batch
from micromets.batch.store import open_store
from micromets.errors import MicrometsError
import conftest
from test_batch import make_slides, write_tile_slide

CLI = [sys.executable, "-c", "from micromets.cli import main; main()"]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}


def _tile(shared_data: Path, i: int = 0) -> Path:
    return sorted((shared_data / "camelyon17_tiles").glob("*.jpeg"))[i]


def write_bad_files(folder: Path, shared_data: Path, huge: bool = False) -> dict[str, str]:
    """Every bad input of the issue in `folder`; returns {file name: text its failure reason must contain}."""
    folder.mkdir(parents=True, exist_ok=True)
    expect = {}
    (folder / "empty.svs").write_bytes(b"")
    expect["empty.svs"] = "empty file"
    (folder / "random.svs").write_bytes(np.random.default_rng(7).bytes(200_000))
    expect["random.svs"] = "not a slide format"
    whole = write_tile_slide(folder / "whole.tmp", _tile(shared_data, 3)).read_bytes()
    (folder / "whole.tmp").unlink()
    for cut in (8, 300, len(whole) // 3, len(whole) - 64):
        (folder / f"truncated_{cut}.tif").write_bytes(whole[:cut])
        expect[f"truncated_{cut}.tif"] = f"truncated_{cut}.tif"
    absurd = write_tile_slide(folder / "absurd.tif", _tile(shared_data, 3))
    with tifffile.TiffFile(absurd, mode="r+b") as tif:  # 2^31 - 1 px square declared, tiles for 1024 px
        for key in ("ImageWidth", "ImageLength"):
            tif.pages[0].tags[key].overwrite(2**31 - 1, dtype="I")
    expect["absurd.tif"] = "absurd.tif"
    write_tile_slide(folder / "no_resolution.tif", _tile(shared_data, 3), mpp=None)
    expect["no_resolution.tif"] = "resolution unknown"
    (folder / "folder_named_like_a.svs").mkdir()
    expect["folder_named_like_a.svs"] = "is a directory"
    os.mkfifo(folder / "fifo.svs")
    expect["fifo.svs"] = "not a regular file"
    os.symlink(folder / "gone.svs", folder / "dangling.svs")
    expect["dangling.svs"] = "cannot read"
    if huge:
        write_sparse_giant(folder / "giant.tif", shared_data)
        expect["giant.tif"] = "giant.tif"
    return expect


def write_sparse_giant(path: Path, shared_data: Path, n_tiles: int = 256) -> Path:
    """A one-level TIFF declaring (256·n)² px whose every tile is the same real H&E tile (see conftest)."""
    rgb = np.asarray(Image.open(_tile(shared_data, 3)).convert("RGB"))
    return conftest.write_sparse_giant(path, rgb, n_tiles)


def _check_bad_batch(summary, expect: dict[str, str], good: list[Path], db: Path) -> None:
    by_name = {Path(r["path"]).name: r for r in summary.rows}
    for name, reason in expect.items():
        assert by_name[name]["status"] == "failed", name
        assert reason in by_name[name]["error"], (name, by_name[name]["error"])
        assert "\n" not in by_name[name]["error"]
    for path in good:
        assert by_name[path.name]["status"] in ("done", "skipped"), by_name[path.name]
    with open_store(db) as store:
        rows = store.slides()
        assert store.integrity_ok()
    assert len(rows) == len(expect) + len(good)
    assert len({(r["content_id"], r["settings_key"]) for r in rows}) == len(rows)


@pytest.fixture(scope="module")
def good_slides(tmp_path_factory, shared_data) -> list[Path]:
    return make_slides(tmp_path_factory.mktemp("good"), shared_data, n=2)


def test_bad_files_fail_alone_and_stay_failed_once(tmp_path, good_slides, shared_data):
    folder = tmp_path / "archive"
    expect = write_bad_files(folder, shared_data)
    for path in good_slides:
        shutil.copy(path, folder / path.name)
    good = [folder / p.name for p in good_slides]
    out = tmp_path / "out"
    summary = run_batch([folder], out)
    assert (summary.n_done, summary.n_failed) == (len(good), len(expect))
    _check_bad_batch(summary, expect, good, out / "results.sqlite")
    again = run_batch([folder], out)  # failed inputs are retried (and fail again), done ones skipped
    assert (again.n_done, again.n_skipped, again.n_failed) == (0, len(good), len(expect))
    _check_bad_batch(again, expect, good, out / "results.sqlite")


def test_batch_cli_reports_failures_and_exit_code(tmp_path, good_slides):
    (tmp_path / "bad.svs").write_bytes(b"II*\0garbage")
    proc = subprocess.run(CLI + ["batch", str(good_slides[0]), str(tmp_path / "bad.svs"), "--out",
                                 str(tmp_path / "out"), "--workers", "0"], env=ENV, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert "bad.svs" in proc.stderr and "Traceback" not in proc.stderr
    assert "batch run 1" in proc.stdout
    missing = subprocess.run(CLI + ["batch", str(tmp_path / "nothing"), "--out", str(tmp_path / "out")], env=ENV,
                             capture_output=True, text=True, timeout=300)
    assert missing.returncode == 2 and missing.stderr.strip().splitlines()[-1].startswith("micromets: error: ")
    assert "nothing" in missing.stderr and "Traceback" not in missing.stderr


UNPRIVILEGED = ["setpriv", "--inh-caps=-dac_override,-dac_read_search",
                "--bounding-set=-dac_override,-dac_read_search", "--"]


@pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs setpriv (util-linux) to drop root's override")
def test_unreadable_slide_and_read_only_folder_without_permission_override(tmp_path, good_slides):
    locked = tmp_path / "in" / "locked.tif"
    locked.parent.mkdir()
    shutil.copy(good_slides[0], locked)
    locked.chmod(0o000)
    readable = tmp_path / "in" / "readable.tif"
    shutil.copy(good_slides[1], readable)
    out = tmp_path / "out"
    run = dict(env=ENV, capture_output=True, text=True, timeout=300)
    proc = subprocess.run(UNPRIVILEGED + CLI + ["batch", str(tmp_path / "in"), "--out", str(out), "-w", "0"], **run)
    assert proc.returncode == 2, proc.stderr
    assert "locked.tif: cannot read slide file (Permission denied)" in proc.stderr
    with open_store(out / "results.sqlite") as store:
        status = {Path(r["path"]).name: r["status"] for r in store.slides()}
    assert status == {"locked.tif": "failed", "readable.tif": "done"}
    read_only = tmp_path / "read_only"
    read_only.mkdir(mode=0o555)
    proc = subprocess.run(UNPRIVILEGED + CLI + ["batch", str(readable), "--out", str(read_only / "out"), "-w", "0"],
                          **run)
    assert proc.returncode == 2 and "not writable" in proc.stderr.splitlines()[-1], proc.stderr
    assert not (read_only / "out").exists()
    locked.chmod(0o644)


@pytest.fixture
def tmpfs(tmp_path):
    """`mount(options)` mounts a fresh tmpfs and returns its path; every mount is undone at teardown."""
    mounted: list[Path] = []

    def mount(options: str) -> Path:
        path = tmp_path / f"tmpfs{len(mounted)}"
        path.mkdir()
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True)
        if proc.returncode:
            pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.decode().strip()})")
        mounted.append(path)
        return path

    yield mount
    for path in mounted:
        subprocess.run(["umount", "--lazy", str(path)], check=True)


def test_read_only_and_full_disks_stop_cleanly(tmpfs, good_slides):
    with pytest.raises(MicrometsError, match="not writable"):
        run_batch(good_slides, tmpfs("size=1m,ro") / "out")
    disk = tmpfs("size=4m")
    out = disk / "out"
    assert run_batch(good_slides[:1], out).n_done == 1
    free = shutil.disk_usage(disk).free
    (disk / "filler").write_bytes(b"\0" * (free - 48 * 1024))  # leave 48 KiB: less than one slide's outputs
    try:  # the outputs or the store hit the full disk: failed slides or one clear error, never a traceback
        summary = run_batch(good_slides, out, force=True)
        errors = [r["error"] for r in summary.rows if r["status"] == "failed"]
        assert errors and all("No space left on device" in e for e in errors), errors
    except MicrometsError as err:
        assert "No space left on device" in str(err) or "full" in str(err), str(err)
    (disk / "filler").unlink()
    with open_store(out / "results.sqlite") as store:
        assert store.integrity_ok()
        for row in store.slides(status="done"):
            assert {p.name for p in Path(row["out_dir"]).iterdir()} == {
                "result.json", "heatmap.npy", "heatmap.tif", "heatmap.png", "lesions.geojson", "lesions.xml", "cells.geojson"}
    after = run_batch(good_slides, out)  # space back: the batch completes
    assert after.n_failed == 0 and after.n_done + after.n_skipped == len(good_slides)


def test_one_batch_per_output_folder_and_slide_timeout(tmp_path, good_slides, shared_data):
    out = tmp_path / "out"
    out.mkdir()
    with open(out / LOCK, "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(MicrometsError, match="another micromets batch"):
            run_batch(good_slides, out)
    # 29,696² px: under slide.MAX_SMALLEST_LEVEL_PX, so it is analysed (slowly) rather than refused
    giant = write_sparse_giant(tmp_path / "giant.tif", shared_data, n_tiles=116)
    start = time.perf_counter()
    summary = run_batch([giant], out, timeout_s=3)
    assert summary.rows[0]["status"] == "failed" and "timed out after 3 s" in summary.rows[0]["error"]
    assert time.perf_counter() - start < 60


def test_a_slide_timeout_is_not_swallowed_by_an_except_exception():
    """The timeout is injected into whatever runs; a broad `except Exception` there (like a reader's fallback for
    corrupt tiles) must not catch it (once it did: the giant slide above failed as "cannot read region ()")."""
    from micromets.batch.run import SlideTimeout, call_with_timeout

    def busy_with_a_broad_handler():
        end = time.perf_counter() + 5
        while time.perf_counter() < end:
            try:
                time.sleep(0.01)
            except Exception:
                pass
        return "swallowed"

    start = time.perf_counter()
    with pytest.raises(SlideTimeout):
        call_with_timeout(busy_with_a_broad_handler, 0.2)
    assert time.perf_counter() - start < 2


# ---- SIGKILL at random moments ---------------------------------------------------------------------------------


def _kill_and_resume(slides: list[Path], out: Path, kills: int, workers: int, seed: int) -> int:
    """Run the real `micromets batch` `kills` times, SIGKILLing it after a random delay, then once to the end.
    The delays are drawn over the time one whole batch of these slides takes on this machine (timed first, into
    a scratch folder), so the kills land anywhere in the run however fast the machine is. Two attempts in three
    use --force, so there is mostly work in flight to interrupt (the replacement of published folders is
    interrupted too); the third resumes what the killed ones left. Returns how many attempts were actually
    killed mid-way."""
    rng = random.Random(seed)
    args = CLI + ["batch", *map(str, slides), "--workers", str(workers)]
    start = time.perf_counter()
    subprocess.run(args + ["--out", str(out.parent / f"{out.name}-timing")], env=ENV, capture_output=True,
                   timeout=900, check=True)
    whole_run_s = time.perf_counter() - start
    args += ["--out", str(out)]
    killed = 0
    for attempt in range(kills):
        proc = subprocess.Popen(args + ["--force"] * (attempt % 3 != 2), env=ENV, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            proc.wait(timeout=rng.uniform(0.2, 0.9) * whole_run_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the CLI and any Dask worker processes it started
            killed += 1
            proc.wait(timeout=60)
    final = subprocess.run(args, env=ENV, capture_output=True, text=True, timeout=900)
    assert final.returncode == 0, final.stderr
    return killed


def _check_exactly_one_complete_result(slides: list[Path], out: Path) -> None:
    with open_store(out / "results.sqlite") as store:
        assert store.integrity_ok()
        rows = store.slides()
    assert sorted(r["path"] for r in rows) == sorted(map(str, slides))
    assert all(r["status"] == "done" for r in rows)
    visible = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    assert visible == sorted([s.stem for s in slides] + ["results.sqlite"] +
                             [n for n in ("results.sqlite-wal", "results.sqlite-shm") if (out / n).exists()])
    for row in rows:
        folder = Path(row["out_dir"])
        assert {p.name for p in folder.iterdir()} == {"result.json", "heatmap.npy", "heatmap.tif", "heatmap.png",
                                                   "lesions.geojson", "lesions.xml", "cells.geojson"}
    assert not any((out / ".staging").iterdir())


def test_sigkill_at_random_moments_then_resume(tmp_path, shared_data):
    slides = make_slides(tmp_path / "slides", shared_data, n=3)
    out = tmp_path / "out"
    killed = _kill_and_resume(slides, out, kills=3, workers=0, seed=1)
    _check_exactly_one_complete_result(slides, out)
    assert killed >= 1


@pytest.mark.slow
@pytest.mark.parametrize("workers", [0, 2])
def test_stress_many_kills(tmp_path, shared_data, workers):
    slides = make_slides(tmp_path / "slides", shared_data, n=5)
    out = tmp_path / "out"
    killed = _kill_and_resume(slides, out, kills=10, workers=workers, seed=workers)
    _check_exactly_one_complete_result(slides, out)
    assert killed >= 4
    print(f"workers={workers}: {killed} kills, {len(slides)} slides, exactly one complete result each")


@pytest.mark.slow
def test_stress_bad_files_on_a_two_worker_cluster(tmp_path, shared_data):
    folder = tmp_path / "archive"
    expect = write_bad_files(folder, shared_data, huge=True)
    good = make_slides(folder, shared_data, n=3)
    out = tmp_path / "out"
    summary = run_batch([folder], out, workers=2, timeout_s=60)
    _check_bad_batch(summary, expect, good, out / "results.sqlite")


@pytest.mark.slow
def test_a_dying_worker_fails_its_slides_and_the_batch_goes_on(tmp_path, good_slides):
    import dask
    import distributed  # noqa: F401 (loads its config defaults before the override below)
    import psutil

    from micromets.phantom.build import build_phantom

    tiles = Path(__file__).resolve().parents[1] / "src" / "micromets" / "data" / "tiles"
    # a slide that takes seconds to analyse, so the worker is caught with it open (small ones come and go in ms)
    build_phantom(tmp_path / "big", tiles / "normal", tiles / "tumor", 0.243, "micro:1@0.5", (3.0, 3.0),
                  seed=1, name="big")
    big = str((tmp_path / "big" / "big.tiff").resolve())
    slides = [Path(big)] + list(good_slides)

    def kill_first_worker() -> None:
        """Kill the worker while it has the big slide open, i.e. mid-analysis."""
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                for proc in psutil.Process().children(recursive=True):
                    if "spawn_main" in " ".join(proc.cmdline()) and any(f.path == big for f in proc.open_files()):
                        proc.kill()  # what the kernel's OOM killer or a segfault does to a worker
                        return
            except psutil.Error:  # a process vanished while looked at: look again
                pass
            time.sleep(0.01)

    killer = threading.Thread(target=kill_first_worker, daemon=True)
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
        killer.start()
        summary = run_batch(slides, tmp_path / "out", workers=1)
    killer.join()
    errors = [r["error"] for r in summary.rows if r["status"] == "failed"]
    assert errors and all("worker process analysing it died" in e for e in errors), summary.rows
    again = run_batch(slides, tmp_path / "out", workers=1)
    assert again.n_failed == 0 and again.n_done == len(errors)
