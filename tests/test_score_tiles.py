"""`micromets score-tiles`: one probability per image file found recursively, bad input as one-line errors."""

import csv
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from micromets.model import Detector

REPO_SRC = str(Path(__file__).resolve().parents[1] / "src")


def _run(*args):
    cmd = [sys.executable, "-c", "import sys; from micromets.cli import main; sys.argv[0] = 'micromets'; main()",
           "score-tiles", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, env={"PYTHONPATH": REPO_SRC, "PATH": "/usr/bin"},
                          timeout=300)


def test_scores_every_image_recursively_and_matches_the_api(tmp_path, shared_data):
    tiles = tmp_path / "tiles"
    (tiles / "tumor" / "deep").mkdir(parents=True)
    (tiles / "normal").mkdir()
    t_src = sorted((shared_data / "camelyon16_patches" / "tumor").glob("*.png"))[:3]
    n_src = sorted((shared_data / "camelyon16_patches" / "normal").glob("*.png"))[:3]
    for p in t_src:
        shutil.copy(p, tiles / "tumor" / "deep" / p.name)
    for p in n_src:
        shutil.copy(p, tiles / "normal" / p.name)
    (tiles / "notes.txt").write_text("not an image")
    out = tmp_path / "scores.csv"
    run = _run(tiles, "--mpp", 0.243, "--out", out)
    assert run.returncode == 0, run.stderr[-2000:]
    rows = list(csv.DictReader(out.open()))
    assert [Path(r["path"]).name for r in rows] == sorted(p.name for p in n_src) + sorted(p.name for p in t_src)
    prob = {Path(r["path"]).name: float(r["probability"]) for r in rows}
    assert all(0.0 <= v <= 1.0 for v in prob.values())
    det = Detector.load()
    first = np.asarray(Image.open(t_src[0]).convert("RGB"))
    assert prob[t_src[0].name] == round(det.score_image(first, 0.243), 6)


def test_a_large_tile_is_the_maximum_over_its_windows(shared_data):
    det = Detector.load()
    tile = np.asarray(Image.open(shared_data / "crc_tiles" / "nct_crc_he_100k" / "TUM-AACHEHDV.tif").convert("RGB"))
    windows = det.windows(tile, 0.5)
    assert len(windows) == 9  # 224 px at the model's 0.5 µm/px → 3 × 3 windows of 96 px, the last ones flush
    det.set_stain_reference(windows)
    expect = float(det.predict(windows).max())
    det.set_stain_reference(None)
    assert det.score_image(tile, 0.5) == expect


def test_bad_input_is_one_line_and_exit_code_2(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    run = _run(empty, "--mpp", 0.5, "--out", tmp_path / "s.csv")
    assert run.returncode == 2 and "no image files" in run.stderr and len(run.stderr.strip().splitlines()) == 1
    (empty / "broken.png").write_bytes(b"not a png")
    run = _run(empty, "--mpp", 0.5, "--out", tmp_path / "s.csv")
    assert run.returncode == 2 and "broken.png" in run.stderr
    (empty / "broken.png").unlink()
    Image.fromarray(np.full((50, 50, 3), 200, np.uint8)).save(empty / "ok.png")
    run = _run(empty, "--mpp", -1, "--out", tmp_path / "s.csv")
    assert run.returncode == 2 and "µm/px" in run.stderr
