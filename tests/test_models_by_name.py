"""Models by name: `micromets models` lists the installed detectors and `--model NAME|DIR` picks one in every
command, refusing an unknown name before any work."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from micromets.model import installed_models

REPO = Path(__file__).resolve().parents[1]
DEMO_SLIDE = REPO / "src" / "micromets" / "data" / "demo" / "slides" / "node1.tiff"
INSTALLED = ("cnn-ln", "coarse", "default", "tissue-classes", "tissue-context", "without-tumor_064")


def micromets(*args, cwd=None):
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    return subprocess.run([sys.executable, "-m", "micromets", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=600)


def test_analyze_by_model_name_uses_that_model(tmp_path):
    run = micromets("analyze", DEMO_SLIDE, "--model", "tissue-classes", "--out", tmp_path / "out")
    assert run.returncode == 0, run.stderr
    result = json.loads((tmp_path / "out" / "node1" / "result.json").read_text())
    assert result["model"]["name"] == "micromets-tissue"


def test_a_model_folder_still_works(tmp_path):
    folder = installed_models()["without-tumor_064"]
    run = micromets("analyze", DEMO_SLIDE, "--model", folder, "--out", tmp_path / "out")
    assert run.returncode == 0, run.stderr
    result = json.loads((tmp_path / "out" / "node1" / "result.json").read_text())
    assert result["model"]["name"] == "micromets-cnn-ln-without-tumor_064"


@pytest.mark.parametrize("command", [
    ["analyze", DEMO_SLIDE, "--out", "out"],
    ["case", REPO / "src" / "micromets" / "data" / "demo" / "manifest.csv", "--out", "out"],
    ["batch", DEMO_SLIDE, "--out", "out", "--workers", "0"],
    ["bench", "--out", "out", "--work", "work"],
    ["score-tiles", REPO / "src" / "micromets" / "data" / "demo" / "slides", "--mpp", "0.5", "--out", "out.csv"],
])
def test_unknown_model_name_is_one_line_exit_2_and_writes_nothing(tmp_path, command):
    run = micromets(*command, "--model", "nope", cwd=tmp_path)
    assert run.returncode == 2, run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "--model nope" in lines[0], run.stderr
    assert all(name in lines[0] for name in INSTALLED), lines[0]
    assert "Traceback" not in run.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_folder_without_a_model_is_refused_before_work(tmp_path):
    (tmp_path / "empty").mkdir()
    run = micromets("analyze", DEMO_SLIDE, "--model", tmp_path / "empty", "--out", tmp_path / "out")
    assert run.returncode == 2 and "not a model folder" in run.stderr
    assert not (tmp_path / "out").exists()


def test_models_lists_every_installed_model_with_its_card():
    run = micromets("models")
    assert run.returncode == 0, run.stderr
    blocks = {block.split(":")[0].replace(" (the default)", ""): block
              for block in run.stdout.split("\n") if block and not block.startswith(" ")}
    assert sorted(blocks) == sorted(INSTALLED) == sorted(installed_models())
    assert "micromets-tissue 0.3.1" in blocks["tissue-classes"]
    tissue = run.stdout.split("tissue-classes:")[1].split("\nwithout-tumor_064")[0]
    assert ("classes: lymphoid, stroma, fat, muscle_vessel, debris_blood, background, carcinoma "
            "(tumour class: carcinoma)") in tissue
    assert "input: 0.5 µm/px, 96 px patches" in tissue and "licence: research use only" in tissue
    assert "AUC 0.986 ± 0.006" in tissue  # its held-out headline, from the card
    assert "(the default)" in blocks["default"] and "2.0 µm/px, 32 px" in run.stdout.split("coarse:")[1]
    assert "micromets-tissue 0.5" in blocks["default"] and "micromets-cnn-ln 0.2.1" in blocks["cnn-ln"]
    context = run.stdout.split("tissue-context:")[1].split("\nwithout-tumor_064")[0]
    assert "micromets-tissue-context 0.6.0" in context
    assert "context check: 96.0 µm at 1.0 µm/px around each hot cell (context/)" in context
    assert "context check" not in run.stdout.split("tissue-context:")[0]  # only the model that has one
    assert "installed models" in run.stderr and "installed models" not in run.stdout


def test_models_name_prints_that_card_and_an_unknown_name_is_refused():
    run = micromets("models", "tissue-classes")
    assert run.returncode == 0, run.stderr
    card = json.loads(run.stdout)
    assert card == json.loads((installed_models()["tissue-classes"] / "model.json").read_text())
    assert len(card["classes"]) == 7 and card["classes"][card["tumour_class_index"]] == "carcinoma"
    bad = micromets("models", "nope")
    assert bad.returncode == 2 and bad.stdout == "" and len(bad.stderr.strip().splitlines()) == 1
    assert all(name in bad.stderr for name in INSTALLED)
