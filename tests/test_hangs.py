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
