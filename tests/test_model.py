"""The detector seam: shipped default model and card, predict contract, tissue filter, tile windows, bad input."""

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from micromets.errors import MicrometsError
from micromets.model import Detector, default_model_dir


@pytest.fixture(scope="module")
def detector() -> Detector:
    return Detector.load()


def _patches(folder, detector, limit=None):
    """Real 256 px CAMELYON16 patches (0.243 µm/px) → one centred model patch each at the model's µm/px."""
    paths = sorted(folder.glob("*.png"))[:limit]
    rgb = [np.asarray(Image.open(p).convert("RGB")) for p in paths]
    return np.stack([detector.windows(x, 0.243)[0] for x in rgb])


def test_shipped_card_is_complete_and_honest(detector):
    card = json.loads((default_model_dir() / "model.json").read_text())
    for key in ("name", "version", "family", "input_mpp", "patch_px", "channels", "input", "stain_normalisation",
                "output", "classes", "tumour_class_index", "training_data", "split", "metrics", "date", "command",
                "licence"):
        assert key in card, key
    assert card["classes"][card["tumour_class_index"]] == "carcinoma"
    held = card["metrics"]["held_out"]  # bench/tissue_heldout.py: whole sources held out, over seeds
    assert len(held["seeds"]) >= 2 and 0.0 <= held["summary"]["c16_patches"]["auc"]["mean"] <= 1.0
    assert "operating_point" in held["summary"]  # where held-out normal tissue averages <= 5 % fields called tumour
    assert "centre_3_patient_066_node_1.jpeg" in card["metrics"]["unseen"]["camelyon17_unseen_tiles"]
    assert "patient_066" not in json.dumps(card["split"])  # the unseen-stain tile is really unseen
    assert card["known_failure_modes"] and "non-commercial" in card["licence"]
    size = sum(p.stat().st_size for p in default_model_dir().iterdir())
    assert size <= 20 * 2**20
    assert detector.patch_px == card["patch_px"] and detector.input_mpp == card["input_mpp"]
    assert detector.cell_um == pytest.approx(card["patch_px"] * card["input_mpp"])


def test_predict_contract(detector):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(5, detector.patch_px, detector.patch_px, 3), dtype=np.uint8)
    p = detector.predict(x)
    assert p.shape == (5,) and p.dtype == np.float32
    assert ((p >= 0) & (p <= 1)).all()
    np.testing.assert_array_equal(p, detector.predict(x))  # deterministic
    assert detector.predict(x[:0]).shape == (0,)


def test_background_patches_score_zero(detector):
    white = np.full((3, detector.patch_px, detector.patch_px, 3), 245, np.uint8)
    assert (detector.predict(white) == 0).all()


def test_a_patch_under_ink_is_not_scored(shared_data, detector, tmp_path):
    """Marking ink or black pigment over >= INK_MAX_FRACTION of a patch: probability 0, as glass; less: scored."""
    from micromets.model import INK_MAX_FRACTION

    tumour = _patches(shared_data / "camelyon16_patches" / "tumor", detector, limit=4)
    rows = int(np.ceil(INK_MAX_FRACTION * detector.patch_px))
    inked, lightly = tumour.copy(), tumour.copy()
    inked[:, :rows] = (20, 18, 16)
    lightly[:, :rows - 2] = (20, 18, 16)
    assert (detector.predict(inked) == 0).all()
    assert (detector.predict(lightly) > 0).all()
    folder = shutil.copytree(default_model_dir(), tmp_path / "model")
    card = json.loads((folder / "model.json").read_text())
    card["tissue_filter"]["ink_max_fraction"] = 1.0  # a card may turn the test off
    (folder / "model.json").write_text(json.dumps(card))
    assert (Detector.load(folder).predict(inked) > 0).all()


def test_shipped_model_scores_tumour_above_normal(shared_data, detector):
    """Loose honest check: tumour patches above normal node tissue, including a centre never trained on."""
    tumour = _patches(shared_data / "camelyon16_patches" / "tumor", detector)
    normal = _patches(shared_data / "camelyon16_patches" / "normal", detector)
    unseen = np.asarray(Image.open(shared_data / "camelyon17_tiles" / "centre_3_patient_066_node_1.jpeg")
                        .convert("RGB"))
    unseen_windows = detector.windows(unseen[:1024, :1024], 0.24)
    detector.set_stain_reference(unseen_windows)
    p_unseen = detector.predict(unseen_windows)
    detector.set_stain_reference(None)
    p_t, p_n = detector.predict(tumour), detector.predict(normal)
    assert np.median(p_t) > np.median(p_n) + 0.3
    assert np.median(p_t) > np.quantile(p_unseen, 0.9)
    from sklearn.metrics import roc_auc_score

    y = np.r_[np.ones(len(p_t)), np.zeros(len(p_n) + len(p_unseen))]
    assert roc_auc_score(y, np.r_[p_t, p_n, p_unseen]) > 0.85


def test_slide_stain_reference_is_used_and_can_be_reset(shared_data, detector):
    tumour = _patches(shared_data / "camelyon16_patches" / "tumor", detector, limit=8)
    per_batch = detector.predict(tumour)
    blue = tumour.copy()
    blue[..., 2] = 255  # a nonsense "slide" stain estimate changes the mapping
    detector.set_stain_reference(blue)
    changed = detector.predict(tumour)
    detector.set_stain_reference(None)
    assert not np.allclose(changed, per_batch)
    np.testing.assert_array_equal(detector.predict(tumour), per_batch)


@pytest.mark.parametrize("shape, mpp", [((40, 30, 3), 0.5), ((300, 200, 3), 0.5), ((256, 256, 3), 0.243)])
def test_windows_pad_small_and_cover_large_images(detector, shape, mpp):
    p = detector.patch_px
    rgb = np.random.default_rng(1).integers(0, 256, size=shape, dtype=np.uint8)
    win = detector.windows(rgb, mpp)
    expect = int(np.ceil(max(p, round(shape[0] * mpp / detector.input_mpp)) / p) *
                 np.ceil(max(p, round(shape[1] * mpp / detector.input_mpp)) / p))
    assert win.shape == (expect, p, p, 3)
    if shape[0] * mpp / detector.input_mpp < p:
        # reflection padding keeps the original pixels in the middle
        top = (p - shape[0]) // 2
        left = (p - shape[1]) // 2
        np.testing.assert_array_equal(win[0, top:top + shape[0], left:left + shape[1]], rgb)


def test_bad_input_and_bad_model_folders(tmp_path, detector):
    with pytest.raises(MicrometsError, match="uint8 RGB patches of shape"):
        detector.predict(np.zeros((2, 10, 10, 3), np.uint8))
    with pytest.raises(MicrometsError, match="uint8 RGB patches of shape"):
        detector.predict(np.zeros((2, detector.patch_px, detector.patch_px, 3), np.float32))
    with pytest.raises(MicrometsError, match="not a model folder"):
        Detector.load(tmp_path)
    bad = tmp_path / "bad"
    shutil.copytree(default_model_dir(), bad)
    (bad / "model.json").write_text("{not json")
    with pytest.raises(MicrometsError, match="unreadable model card"):
        Detector.load(bad)
    (bad / "model.json").write_text(json.dumps({"name": "x"}))
    with pytest.raises(MicrometsError, match="lacks"):
        Detector.load(bad)
    shutil.copy(default_model_dir() / "model.json", bad / "model.json")
    (bad / "model.onnx").write_bytes(b"not an onnx file")
    with pytest.raises(MicrometsError, match="onnxruntime cannot load"):
        Detector.load(bad)


def test_the_held_out_model_for_phantoms_never_saw_tumor_064():
    folder = default_model_dir().parent / "without-tumor_064"
    card = json.loads((folder / "model.json").read_text())
    assert "tumor_064" not in json.dumps(card["split"]["final_model_trained_on"])
    assert "tumor_001" in json.dumps(card["split"]["final_model_trained_on"])
    assert "unseen_stain_tiles" in card["metrics"]
    assert Detector.load(folder).patch_px == card["patch_px"]


def test_parallel_predict_equals_one_thread(shared_data):
    """threads=2 splits a call into chunks run at once; the probabilities are those of one thread, in order."""
    one, two = Detector.load(threads=1), Detector.load(threads=2)
    x = _patches(shared_data / "camelyon16_patches" / "tumor", one)
    x = np.concatenate([x, np.full((3,) + x.shape[1:], 245, np.uint8), x[::-1]])  # background in the middle
    for det in (one, two):
        det.set_stain_reference(x)
        det.batch_size = 16  # several chunks per thread
    np.testing.assert_array_equal(one.predict(x), two.predict(x))


def test_coarse_screen_card_is_valid_and_its_onnx_runs(shared_data):
    from micromets.model import coarse_model_dir

    card = json.loads((coarse_model_dir() / "model.json").read_text())
    screen = Detector.load(coarse_model_dir())
    assert 2.0 <= screen.input_mpp <= 4.0 and screen.patch_px == card["patch_px"]
    assert 0.0 < card["screen_threshold"] < 0.5  # a low, high-sensitivity operating point
    held = card["metrics"]["held_out_idc"]
    assert held["auc"] > 0.6 and held["screen_threshold_sensitivity"] >= 0.9  # a weak screen, but not chance
    held_patients = set(card["split"]["held_out_idc_patients"])
    assert held_patients and not held_patients & set(card["split"]["final_model_trained_on"]["idc_breast"])
    assert "research use" in json.dumps(card["training_data"]) and "research" in card["licence"]
    assert "patient_066" not in json.dumps(card["split"])
    assert sum(p.stat().st_size for p in coarse_model_dir().iterdir()) <= 3 * 2**20
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(4, screen.patch_px, screen.patch_px, 3), dtype=np.uint8)
    p = screen.predict(x)
    assert p.shape == (4,) and ((p >= 0) & (p <= 1)).all()


def test_the_bundled_tissue_class_model_card_and_scores(shared_data):
    """The opt-in tissue-class model (issue 14): seven classes with carcinoma as the tumour class, its held-out
    report over seeds, the sources it held back for the bench, failure modes in words, a research-only licence;
    and it scores CAMELYON16 tumour patches above normal ones through the same Detector seam."""
    folder = default_model_dir().parent / "tissue-classes"
    card = json.loads((folder / "model.json").read_text())
    assert card["classes"][card["tumour_class_index"]] == "carcinoma" and len(card["classes"]) == 7
    held = card["metrics"]["held_out"]
    assert len(held["seeds"]) >= 3 and held["summary"]["monuseg_carcinoma"]["labelled_window_sensitivity"]["sd"]
    assert set(card["held_back"]) == {"crc_tiles/kather2016/02_STROMA", "crc_tiles/kather2016/07_ADIPOSE"}
    assert card["known_failure_modes"] and "research use only" in card["licence"]
    det = Detector.load(folder)
    tumour = det.predict(_patches(shared_data / "camelyon16_patches" / "tumor", det, 12))
    normal = det.predict(_patches(shared_data / "camelyon16_patches" / "normal", det, 12))
    assert np.median(tumour) > 0.5 > np.median(normal)
