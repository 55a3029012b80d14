"""Inputs that used to hang a command or eat its memory are refused up front, with the bound in the message."""

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


def _micromets(*args: str, timeout_s: float = 60) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    return subprocess.run([sys.executable, "-m", "micromets", *args], capture_output=True, text=True, env=env,
                          timeout=timeout_s, stdin=subprocess.DEVNULL)


def _run_watching_memory(args: list[str], timeout_s: float = 120) -> tuple[int, str, int]:
    """Run ``micromets ARGS`` and sample its resident memory every 50 ms: (exit code, stderr, peak RSS bytes)."""
    import psutil

    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    proc = psutil.Popen([sys.executable, "-m", "micromets", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                        text=True, env=env)
    peak = 0
    while proc.poll() is None:
        try:
            peak = max(peak, proc.memory_info().rss)
        except psutil.NoSuchProcess:
            break
        time.sleep(0.05)
    _, stderr = proc.communicate(timeout=timeout_s)
    return proc.returncode, stderr, peak


def _one_line_exit_2(done: subprocess.CompletedProcess, *words: str) -> None:
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("micromets: error")]
    assert lines and all(word in lines[0] for word in words), done.stderr


@pytest.fixture
def fifo(tmp_path) -> Path:
    path = tmp_path / "node1.svs"
    os.mkfifo(path)
    return path


def test_analyze_refuses_a_fifo_instead_of_blocking(fifo, tmp_path):
    done = _micromets("analyze", str(fifo), "--out", str(tmp_path / "out"), timeout_s=60)
    _one_line_exit_2(done, "not a regular file", "FIFO")


def test_case_refuses_a_fifo_slide_instead_of_blocking(fifo, tmp_path):
    manifest = tmp_path / "manifest.csv"
    manifest.write_text(f"patient,node,slide_path\np1,1,{fifo.name}\n")
    done = _micromets("case", str(manifest), "--out", str(tmp_path / "out"), timeout_s=60)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "not a regular file" in done.stderr


@pytest.mark.parametrize("command", ["analyze", "batch"])
@pytest.mark.parametrize("mpp", ["20", "2.5", "0", "-1", "0.01", "nan", "inf"])
def test_implausible_mpp_is_refused_before_any_work(command, mpp, tmp_path):
    """--mpp 20 made analyze read the slide 40x upsampled for minutes."""
    slide = REPO / "demo" / "slides" / "node1.tiff"
    start = time.monotonic()
    done = _micromets(command, str(slide), "--out", str(tmp_path / "out"), "--mpp", mpp)
    _one_line_exit_2(done, "--mpp", "µm/px", "0.05-2")
    assert time.monotonic() - start < 30
    assert not (tmp_path / "out" / slide.stem / "result.json").exists()


@pytest.mark.parametrize("side_px", [12_000, 20_000])
def test_score_tiles_refuses_a_giant_image_from_its_header(side_px, tmp_path):
    """A 12000² PNG peaked at 2 GB in score-tiles and a 20000² one crashed (decompression bomb)."""
    import zlib

    folder = tmp_path / "tiles"
    folder.mkdir()
    # A real PNG of side_px² white pixels, compressed row by row (a few hundred kB on disk).
    row = b"\x00" + b"\xff" * (3 * side_px)
    comp = zlib.compressobj(9)
    data = b"".join(comp.compress(row) for _ in range(side_px)) + comp.flush()

    def chunk(kind: bytes, body: bytes) -> bytes:
        return len(body).to_bytes(4, "big") + kind + body + zlib.crc32(kind + body).to_bytes(4, "big")

    ihdr = side_px.to_bytes(4, "big") * 2 + bytes([8, 2, 0, 0, 0])
    (folder / "bomb.png").write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", data)
                                      + chunk(b"IEND", b""))
    returncode, stderr, peak = _run_watching_memory(["score-tiles", str(folder), "--mpp", "0.5", "--out",
                                                     str(tmp_path / "scores.csv")])
    assert returncode == 2 and "Traceback" not in stderr, stderr
    assert "megapixels" in stderr and "bomb.png" in stderr
    assert peak < 1.0e9


def test_evaluate_camelyon16_refuses_a_reference_beyond_any_slide(tmp_path):
    """A huge reference polygon asked for 29 GiB (or raised ValueError) building the level-5 mask."""
    import json

    (tmp_path / "det").mkdir()
    (tmp_path / "ref").mkdir()
    (tmp_path / "det" / "tumor_001.csv").write_text("0.9,1000,1000\n")
    (tmp_path / "det" / "normal_001.csv").write_text("0.1,1000,1000\n")
    big = 5e7
    (tmp_path / "ref" / "tumor_001.json").write_text(json.dumps(
        {"positive": [{"name": "a", "vertices": [[0, 0], [big, 0], [big, big], [0, big]]}], "negative": []}))
    returncode, stderr, peak = _run_watching_memory(["evaluate", "camelyon16", str(tmp_path / "det"),
                                                     str(tmp_path / "ref")])
    assert returncode == 2 and "Traceback" not in stderr, stderr
    assert "tumor_001.json" in stderr and "80 mm" in stderr
    assert peak < 1.0e9


@pytest.mark.parametrize("args", [
    ["stage", "FIFO"], ["evaluate", "camelyon17", "FIFO", "FIFO"], ["case", "FIFO", "--out", "OUT"],
    ["results", "--db", "FIFO"], ["threshold", "--db", "FIFO", "--labels", "FIFO"],
])
def test_csv_and_store_inputs_refuse_a_fifo_instead_of_blocking(args, tmp_path):
    """stage, evaluate camelyon17 and threshold waited forever for a writer on a FIFO (found by the CLI fuzz)."""
    path = tmp_path / "input.csv"
    os.mkfifo(path)
    done = _micromets(*[{"FIFO": str(path), "OUT": str(tmp_path / "out")}.get(a, a) for a in args], timeout_s=60)
    _one_line_exit_2(done, "not a regular file", "FIFO")
    assert not (tmp_path / "out").exists()
