"""`analyze --batch-size N --threads N` (the TIAToolbox/MONAI users' knobs) change how patches are run, not what is
found: the result and the heatmap are the same as at the defaults; a bad value is refused before any work."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
DEMO_SLIDE = REPO / "src" / "micromets" / "data" / "demo" / "slides" / "node1.tiff"


def micromets(*args):
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    return subprocess.run([sys.executable, "-m", "micromets", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=600)


def test_batch_size_and_threads_leave_the_result_unchanged(tmp_path):
    outputs = {}
    for label, options in {"default": (), "small": ("--batch-size", "16", "--threads", "1")}.items():
        run = micromets("analyze", DEMO_SLIDE, "--out", tmp_path / label, *options)
        assert run.returncode == 0, run.stderr
        result = json.loads((tmp_path / label / "node1" / "result.json").read_text())
        result.pop("timing_s")
        outputs[label] = result, np.load(tmp_path / label / "node1" / "heatmap.npy")
    (default, default_map), (small, small_map) = outputs["default"], outputs["small"]
    assert small == default
    np.testing.assert_array_equal(small_map, default_map)
    assert default_map.max() > 0  # the heatmap scored tissue: equal because equal, not because empty


@pytest.mark.parametrize("option", ["--batch-size", "--threads"])
def test_a_batch_size_or_thread_count_below_1_is_refused_before_work(tmp_path, option):
    run = micromets("analyze", DEMO_SLIDE, "--out", tmp_path / "out", option, "0")
    assert run.returncode == 2 and run.stderr.strip() == f"micromets: error: {option} 0: must be a number >= 1"
    assert not (tmp_path / "out").exists()
