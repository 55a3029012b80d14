"""The seed ensemble (micromets.train.ensemble) and the verifier of a detector: one ONNX graph averaging its
members' softmax, loaded beside the detector, and the lesion confirmation that asks it (issue 14)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from micromets.errors import MicrometsError
from micromets.model import Detector, default_model_dir
from micromets.train.ensemble import VERIFIER_FILE, ensemble_onnx
from micromets.train.fit import export_onnx
from micromets.train.net import PatchNet

REPO = Path(__file__).resolve().parents[1]


def _member(folder: Path, seed: int, n_classes: int = 7, normal_bias: float | None = None) -> Path:
    """A small real PatchNet exported to ONNX (random weights of ``seed``; ``normal_bias``: a classifier that calls
    every patch class 0, by that margin)."""
    torch.manual_seed(seed)
    net = PatchNet(width=4, n_classes=n_classes)
    if normal_bias is not None:
        linear = [m for m in net.modules() if isinstance(m, torch.nn.Linear)][-1]
        with torch.no_grad():
            linear.weight.zero_()
            linear.bias.zero_()
            linear.bias[0] = normal_bias
    export_onnx(net, folder, {"name": f"m{seed}"}, 96, seed)
    return folder / "model.onnx"


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_ensemble_graph_outputs_the_mean_softmax_of_its_members(tmp_path):
    members = [_member(tmp_path / f"m{s}", s) for s in range(3)]
    path = ensemble_onnx(members, tmp_path / "ens.onnx")
    x = np.random.default_rng(0).normal(size=(5, 3, 96, 96)).astype(np.float32)
    got = ort.InferenceSession(str(path)).run(None, {"input": x})[0]
    each = [_softmax(ort.InferenceSession(str(m)).run(None, {"input": x})[0]) for m in members]
    assert got.shape == (5, 7)
    np.testing.assert_allclose(got, np.mean(each, axis=0), atol=1e-6)
    assert not np.allclose(each[0], each[1], atol=1e-3)  # the members differ, so the mean is not one of them
    with pytest.raises(ValueError, match="at least two"):
        ensemble_onnx(members[:1], tmp_path / "one.onnx")


def _with_verifier(tmp_path: Path, members: list[Path]) -> Path:
    folder = tmp_path / "model"
    shutil.copytree(default_model_dir(), folder)
    ensemble_onnx(members, folder / VERIFIER_FILE)
    card = json.loads((folder / "model.json").read_text())
    card["verifier"] = {"file": VERIFIER_FILE, "output": "probabilities",
                        "members": [{"name": m.parent.name, "version": "0", "seed": k} for k, m in enumerate(members)]}
    (folder / "model.json").write_text(json.dumps(card))
    return folder


def test_verifier_sees_the_patches_the_detector_sees(tmp_path, shared_data):
    """The default's own graph twice as a verifier scores real patches as the detector does, with the slide's
    stain estimate (set once on the detector) and with the per-batch one."""
    detector = Detector.load(_with_verifier(tmp_path, [default_model_dir() / "model.onnx"] * 2))
    tiles = sorted((shared_data / "camelyon16_patches").rglob("*.png"))[:6]
    from micromets.train.data import read_rgb

    patches = np.concatenate([detector.windows(read_rgb(t), 0.243)[:2] for t in tiles])
    np.testing.assert_allclose(detector.verifier.predict(patches), detector.predict(patches), atol=1e-5)
    detector.set_stain_reference(patches[:4])
    np.testing.assert_allclose(detector.verifier.predict(patches), detector.predict(patches), atol=1e-5)
    assert detector.verifier.verifier is None


def test_a_verifier_that_calls_everything_normal_leaves_the_demo_itc_unconfirmed(tmp_path):
    """The cascade decides: demo node 3's ITC, confirmed by the detector alone, is scored again by the verifier
    (here members that call every patch normal) and fails; the run records the verifier and the candidate."""
    from micromets.analyze import analyze_slide

    slide = REPO / "demo" / "slides" / "node3.tiff"
    folder = _with_verifier(tmp_path, [_member(tmp_path / f"n{s}", s, normal_bias=8.0) for s in range(2)])
    alone = tmp_path / "alone"  # the default detector without its verifier
    shutil.copytree(default_model_dir(), alone)
    card = json.loads((alone / "model.json").read_text())
    del card["verifier"]
    (alone / "model.json").write_text(json.dumps(card))
    plain = analyze_slide(slide, tmp_path / "plain", detector=Detector.load(alone))
    verified = analyze_slide(slide, tmp_path / "verified", detector=Detector.load(folder))
    assert plain["node_class"] == "itc" and "verifier" not in plain["model"]
    assert verified["node_class"] == "negative" and verified["n_lesions"] == 0
    assert [m["name"] for m in verified["model"]["verifier"]["members"]] == ["n0", "n1"]
    itc = max(verified["unconfirmed_lesions"], key=lambda r: r["diameter_mm"])
    assert itc["confirmed_probability"] < 0.01


def test_a_card_naming_a_missing_or_malformed_verifier_is_refused(tmp_path):
    folder = _with_verifier(tmp_path, [default_model_dir() / "model.onnx"] * 2)
    (folder / VERIFIER_FILE).unlink()
    with pytest.raises(MicrometsError, match="verifier file .* is missing"):
        Detector.load(folder)
    card = json.loads((folder / "model.json").read_text())
    card["verifier"] = {"file": VERIFIER_FILE, "output": "logits?"}
    (folder / "model.json").write_text(json.dumps(card))
    with pytest.raises(MicrometsError, match="verifier needs a file and an output"):
        Detector.load(folder)


def test_bench_verifier_script_writes_the_graph_and_the_card_entry(tmp_path):
    """bench/verifier.py's add_verifier: the graph, the card's members, and the check that it averages them."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("verifier_script", REPO / "bench" / "verifier.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    into = tmp_path / "model"
    shutil.copytree(default_model_dir(), into)
    entry = script.add_verifier(into, [default_model_dir(), default_model_dir()])
    assert (into / VERIFIER_FILE).is_file() and entry["check_max_abs_diff"] < 1e-4
    assert [m["name"] for m in entry["members"]] == ["micromets-tissue"] * 2
    assert Detector.load(into).verifier is not None
    other = tmp_path / "other"
    shutil.copytree(REPO / "src" / "micromets" / "models" / "cnn-ln", other)
    with pytest.raises(MicrometsError, match="classes or patch size differ"):
        script.add_verifier(into, [default_model_dir(), other])


def test_bench_verifier_sets_the_confirmation_at_the_averaged_members_operating_point(tmp_path):
    """--confirm-at-operating-point: confirm_threshold = the held-out operating point of the averaged members, and
    only when the card's held-out ensemble is of the members' own seeds."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("verifier_script", REPO / "bench" / "verifier.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    into = tmp_path / "model"
    shutil.copytree(default_model_dir(), into)
    card = json.loads((into / "model.json").read_text())
    seed = card["training"]["seed"]
    card["metrics"]["held_out"]["ensemble"] = {"members": [seed, seed],
                                               "table": {"operating_point": {"threshold": 0.73}}}
    (into / "model.json").write_text(json.dumps(card))
    script.add_verifier(into, [default_model_dir(), default_model_dir()], confirm_at_operating_point=True)
    card = json.loads((into / "model.json").read_text())
    assert card["confirm_threshold"] == 0.73 and "operating_point" in card["verifier"]["confirm_threshold_from"]
    card["metrics"]["held_out"]["ensemble"]["members"] = [0, 1, 2]
    del card["verifier"]
    (into / "model.json").write_text(json.dumps(card))
    (into / VERIFIER_FILE).unlink()
    with pytest.raises(MicrometsError, match="not of the members' seeds"):
        script.add_verifier(into, [default_model_dir(), default_model_dir()], confirm_at_operating_point=True)
    assert json.loads((into / "model.json").read_text()) == card and not (into / VERIFIER_FILE).exists()  # refused


def test_the_shipped_default_confirms_with_its_seed_ensemble_at_its_held_out_operating_point():
    """The default's card: a verifier of seeds 0, 1, 2 of its recipe, and lesions confirmed at the operating point
    the held-out run measured for exactly those seeds averaged (not a number tuned on the bench)."""
    card = json.loads((default_model_dir() / "model.json").read_text())
    held = card["metrics"]["held_out"]
    assert sorted(m["seed"] for m in card["verifier"]["members"]) == held["ensemble"]["members"] == [0, 1, 2]
    assert card["confirm_threshold"] == held["ensemble"]["table"]["operating_point"]["threshold"]
    assert held["ensemble"]["table"]["operating_point"]["normal_window_share"] <= 0.05
    assert Detector.load().verifier is not None
