"""A user's own detector: `micromets import-model` makes an ONNX, TorchScript or whole-module PyTorch patch
classifier a model folder with its card, installed under a name in the user models folder ($MICROMETS_MODELS) or
written to --out; `micromets fetch-model` downloads one (only when asked), here from a local server the test runs."""

import hashlib
import http.server
import json
import os
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
DEMO_SLIDE = REPO / "src" / "micromets" / "data" / "demo" / "slides" / "node1.tiff"

torch = pytest.importorskip("torch")


def micromets(*args, models_dir, cwd=None):
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"), MICROMETS_MODELS=str(models_dir))
    return subprocess.run([sys.executable, "-m", "micromets", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=600)


@pytest.fixture(scope="module")
def tiny_net(tmp_path_factory):
    """A tiny PatchNet (width 4) saved as TorchScript, as a whole module and as ONNX, with its torch outputs."""
    from micromets.train.net import PatchNet

    folder = tmp_path_factory.mktemp("net")
    torch.manual_seed(0)
    net = PatchNet(width=4).eval()
    torch.jit.save(torch.jit.script(net), folder / "net.ts")
    torch.save(net, folder / "net_whole.pt")
    torch.onnx.export(net, torch.zeros(1, 3, 96, 96), str(folder / "net.onnx"), input_names=["input"],
                      output_names=["logits"], dynamic_axes={"input": {0: "n"}, "logits": {0: "n"}},
                      opset_version=17, dynamo=False)
    torch.onnx.export(torch.nn.Sequential(net, torch.nn.Softmax(1)).eval(), torch.zeros(1, 3, 96, 96),
                      str(folder / "net_prob.onnx"), input_names=["input"], output_names=["p"],
                      dynamic_axes={"input": {0: "n"}, "p": {0: "n"}}, opset_version=17, dynamo=False)
    rgb = np.random.default_rng(0).integers(60, 200, (5, 96, 96, 3), dtype=np.uint8)
    x = torch.from_numpy((rgb.astype(np.float32) / 255 - 0.5) / 0.25).permute(0, 3, 1, 2)
    with torch.no_grad():
        expected = torch.softmax(net(x), 1)[:, 1].numpy()
    return folder, rgb, expected


SCALING = ("--input-mpp", "0.5", "--patch-px", "96", "--mean", "0.5,0.5,0.5", "--std", "0.25,0.25,0.25")


@pytest.mark.parametrize("filename", ["net.ts", "net_whole.pt", "net.onnx"])
def test_imported_model_predicts_as_torch_and_installs_by_name(tmp_path, tiny_net, filename):
    from micromets.model import Detector

    folder, rgb, expected = tiny_net
    models = tmp_path / "models"
    run = micromets("import-model", folder / filename, "--name", "mine", *SCALING, models_dir=models)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == str(models / "mine") and "Warning" not in run.stderr, run.stderr
    card = json.loads((models / "mine" / "model.json").read_text())
    assert card["name"] == "mine" and card["classes"] == ["normal", "tumour"] and card["tumour_class_index"] == 1
    assert card["input_mpp"] == 0.5 and card["patch_px"] == 96 and card["input"]["std"] == [0.25] * 3
    det = Detector.load(models / "mine")
    np.testing.assert_allclose(det._run(rgb), expected, atol=1e-5)
    listed = micromets("models", models_dir=models)
    assert "mine: mine imported" in listed.stdout and f"user model: {models / 'mine'}" in listed.stdout


def test_a_model_giving_probabilities_is_imported_as_such(tmp_path, tiny_net):
    from micromets.model import Detector

    folder, rgb, expected = tiny_net
    models = tmp_path / "models"
    run = micromets("import-model", folder / "net_prob.onnx", "--name", "p", *SCALING, models_dir=models)
    assert run.returncode == 2 and "give --scores probabilities" in run.stderr, run.stderr  # softmax twice: no
    run = micromets("import-model", folder / "net_prob.onnx", "--name", "p", *SCALING, "--scores", "probabilities",
                    models_dir=models)
    assert run.returncode == 0, run.stderr
    np.testing.assert_allclose(Detector.load(models / "p")._run(rgb), expected, atol=1e-5)
    run = micromets("import-model", folder / "net.onnx", "--name", "q", *SCALING, "--scores", "probabilities",
                    models_dir=models)
    assert run.returncode == 2 and "give --scores logits" in run.stderr, run.stderr


@pytest.mark.parametrize("filename", ["net.ts", "net.onnx"])
def test_analyze_runs_with_an_imported_model(tmp_path, tiny_net, filename):
    folder, _, _ = tiny_net
    models = tmp_path / "models"
    run = micromets("import-model", folder / filename, "--name", "mine", *SCALING, models_dir=models)
    assert run.returncode == 0, run.stderr
    run = micromets("analyze", DEMO_SLIDE, "--model", "mine", "--out", tmp_path / "out", models_dir=models)
    assert run.returncode == 0, run.stderr
    result = json.loads((tmp_path / "out" / "node1" / "result.json").read_text())
    assert result["model"]["name"] == "mine"


def test_import_to_a_folder_usable_as_model_dir(tmp_path, tiny_net):
    folder, _, _ = tiny_net
    run = micromets("import-model", folder / "net.onnx", "--name", "mine", *SCALING, "--out", tmp_path / "m",
                    models_dir=tmp_path / "models")
    assert run.returncode == 0, run.stderr
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["model.json", "model.onnx"]
    assert not (tmp_path / "models").exists()  # --out: nothing installed by name


@pytest.mark.parametrize("args, message", [
    (("--patch-px", "64"), "is not N×3×64×64"),
    (("--classes", "a,b,c", "--tumour-class", "c"), "expected (2, 3)"),
    (("--tumour-class", "cancer"), "--tumour-class 'cancer': not one of --classes"),
    (("--std", "0.2,0,0.2"), "--std"),
    (("--name", "default"), "--name default: a model of that name is installed already"),
    (("--name", "../x"), "--name '../x'"),
])
def test_bad_import_is_one_line_exit_2_and_installs_nothing(tmp_path, tiny_net, args, message):
    folder, _, _ = tiny_net
    options = dict(zip(["--name", "--input-mpp", "--patch-px"], ["mine", "0.5", "96"]))
    flat = [v for k, val in options.items() if k not in args for v in (k, val)]
    run = micromets("import-model", folder / "net.onnx", *flat, *args, models_dir=tmp_path / "models")
    assert run.returncode == 2, run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], run.stderr
    assert not (tmp_path / "models").exists() or list((tmp_path / "models").iterdir()) == []


@pytest.fixture
def served(tmp_path, tiny_net):
    """A zip of an imported model served over http by a local server (thread), and its sha256."""
    folder, _, _ = tiny_net
    run = micromets("import-model", folder / "net.onnx", "--name", "served", *SCALING, "--out", tmp_path / "m",
                    models_dir=tmp_path / "unused")
    assert run.returncode == 0, run.stderr
    site = tmp_path / "site"
    site.mkdir()
    with zipfile.ZipFile(site / "model.zip", "w") as zf:
        for name in ("model.onnx", "model.json"):
            zf.write(tmp_path / "m" / name, f"served/{name}")
    with zipfile.ZipFile(site / "card-only.zip", "w") as zf:
        zf.write(tmp_path / "m" / "model.json", "model.json")
    card = json.loads((tmp_path / "m" / "model.json").read_text())
    del card["patch_px"]
    with zipfile.ZipFile(site / "bad-card.zip", "w") as zf:
        zf.write(tmp_path / "m" / "model.onnx", "model.onnx")
        zf.writestr("model.json", json.dumps(card))
    handler = lambda *a: http.server.SimpleHTTPRequestHandler(*a, directory=str(site))  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield (f"http://127.0.0.1:{server.server_address[1]}/model.zip",
               hashlib.sha256((site / "model.zip").read_bytes()).hexdigest())
    finally:
        server.shutdown()


def test_fetch_model_installs_a_served_zip_and_analyze_uses_it(tmp_path, served):
    url, digest = served
    models = tmp_path / "models"
    run = micromets("fetch-model", url, "--name", "remote", "--sha256", digest, models_dir=models)
    assert run.returncode == 0, run.stderr
    assert sorted(p.name for p in (models / "remote").iterdir()) == ["model.json", "model.onnx"]
    run = micromets("analyze", DEMO_SLIDE, "--model", "remote", "--out", tmp_path / "out", models_dir=models)
    assert run.returncode == 0, run.stderr
    assert json.loads((tmp_path / "out" / "node1" / "result.json").read_text())["model"]["name"] == "served"


def test_fetch_model_with_a_wrong_sha256_installs_nothing(tmp_path, served):
    url, digest = served
    models = tmp_path / "models"
    run = micromets("fetch-model", url, "--name", "remote", "--sha256", "0" * 64, models_dir=models)
    assert run.returncode == 2, run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "sha256" in lines[0] and digest in lines[0], run.stderr
    assert list(models.iterdir()) == []
    run = micromets("fetch-model", url.replace("model.zip", "missing.zip"), "--name", "remote", models_dir=models)
    assert run.returncode == 2 and "download failed" in run.stderr and list(models.iterdir()) == []
    for name, message in (("card-only.zip", "holds no model.onnx and model.json"), ("bad-card.zip", "lacks patch_px")):
        run = micromets("fetch-model", url.replace("model.zip", name), "--name", "remote", models_dir=models)
        assert run.returncode == 2 and message in run.stderr and len(run.stderr.strip().splitlines()) == 1, run.stderr
        assert list(models.iterdir()) == []
