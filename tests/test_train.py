"""Training: loaders for each format (on files written in exactly that format), augmentation, metrics, a short
real training run exported to ONNX whose output equals torch's, and the `micromets train` command."""

import json
import subprocess
import sys

import numpy as np
import pytest
import tifffile
from PIL import Image

pytest.importorskip("torch")

from micromets.errors import MicrometsError  # noqa: E402
from micromets.model import Detector  # noqa: E402
from micromets.train import augment, data, fit  # noqa: E402

REPO_SRC = str(__import__("pathlib").Path(__file__).resolve().parents[1] / "src")


def test_folder_per_class_loader_resamples_and_groups_by_slide(shared_data):
    samples = data.load_folder_per_class(shared_data / "camelyon16_patches", 0.243, 0.5, "camelyon16")
    assert len(samples) == 57
    assert {s.group for s in samples} == {"tumor_001", "tumor_004", "tumor_064"}
    assert sum(s.label for s in samples) == 28
    assert all(s.rgb.shape == (124, 124, 3) and s.rgb.dtype == np.uint8 for s in samples)  # 256 × 0.243 / 0.5


def test_idc_loader_reads_patient_layout(shared_data):
    patients = sorted(p.name for p in (shared_data / "idc_breast").iterdir())[:2]
    samples = data.load_idc(shared_data / "idc_breast", target_mpp=8.0, patients=patients)
    assert {s.group for s in samples} == set(patients)
    assert {s.label for s in samples} <= {0, 1}
    for s in samples[:20]:
        assert s.name.endswith(f"class{s.label}.png")
        assert s.rgb.shape[0] <= 25  # 50 px at 4 µm/px → ≤ 25 px at 8 µm/px


def test_pcam_loader_reads_official_hdf5_layout(tmp_path, shared_data):
    import h5py

    tiles = sorted((shared_data / "camelyon16_patches" / "tumor").glob("*.png"))[:3] + \
        sorted((shared_data / "camelyon16_patches" / "normal").glob("*.png"))[:2]
    x = np.stack([np.asarray(Image.open(p).convert("RGB").resize((96, 96))) for p in tiles])
    y = np.array([1, 1, 1, 0, 0], np.uint8).reshape(-1, 1, 1, 1)
    x_path, y_path = data.pcam_paths(tmp_path, "valid")
    assert x_path.name == "camelyonpatch_level_2_split_valid_x.h5"
    with h5py.File(x_path, "w") as f:
        f.create_dataset("x", data=x, compression="gzip")
    with h5py.File(y_path, "w") as f:
        f.create_dataset("y", data=y)
    samples = data.load_pcam(tmp_path, "valid", target_mpp=0.972)
    assert [s.label for s in samples] == [1, 1, 1, 0, 0]
    np.testing.assert_array_equal(samples[4].rgb, x[4])
    assert len(data.load_pcam(tmp_path, "valid", target_mpp=0.5, limit=2)) == 2
    assert data.load_pcam(tmp_path, "valid", target_mpp=0.5)[0].rgb.shape == (187, 187, 3)  # 96 × 0.972 / 0.5
    with pytest.raises(MicrometsError, match="PCam file not found"):
        data.load_pcam(tmp_path, "train", target_mpp=0.5)


def _asap_xml(path, polygons):
    """An ASAP annotation file written literally, as the CAMELYON16/17 releases have them."""
    rows = ['<?xml version="1.0"?>', "<ASAP_Annotations>", "\t<Annotations>"]
    for i, poly in enumerate(polygons):
        rows.append(f'\t\t<Annotation Name="Annotation {i}" Type="Polygon" PartOfGroup="metastases" Color="#F4FA58">')
        rows.append("\t\t\t<Coordinates>")
        rows += [f'\t\t\t\t<Coordinate Order="{k}" X="{x}" Y="{y}" />' for k, (x, y) in enumerate(poly)]
        rows += ["\t\t\t</Coordinates>", "\t\t</Annotation>"]
    rows += ["\t</Annotations>", "\t<AnnotationGroups>",
             '\t\t<Group Name="metastases" PartOfGroup="None" Color="#ff0000"><Attributes /></Group>',
             "\t</AnnotationGroups>", "</ASAP_Annotations>"]
    path.write_text("\n".join(rows))


def test_wsi_xml_loader_samples_inside_and_outside_outlines(tmp_path, shared_data):
    """A tiled TIFF slide (0.243 µm/px) made of real patches: tumour patches left, normal patches right."""
    tum = sorted((shared_data / "camelyon16_patches" / "tumor").glob("*.png"))[:8]
    nor = sorted((shared_data / "camelyon16_patches" / "normal").glob("*.png"))[:8]
    canvas = np.full((512, 1280, 3), 255, np.uint8)
    for i, p in enumerate(tum):
        canvas[(i // 4) * 256:(i // 4 + 1) * 256, (i % 4) * 256 // 2:(i % 4) * 256 // 2 + 256] = \
            np.asarray(Image.open(p).convert("RGB"))
    for i, p in enumerate(nor):
        x0 = 768 + (i % 2) * 256
        canvas[(i // 2 % 2) * 256:(i // 2 % 2 + 1) * 256, x0:x0 + 256] = np.asarray(Image.open(p).convert("RGB"))
    slide = tmp_path / "node.tif"
    tifffile.imwrite(slide, canvas, tile=(256, 256), photometric="rgb", resolution=(1e4 / 0.243, 1e4 / 0.243),
                     resolutionunit="CENTIMETER")
    xml = tmp_path / "node.xml"
    _asap_xml(xml, [[(0, 0), (640, 0), (640, 512), (0, 512)]])
    samples = data.load_wsi_xml(slide, xml, target_mpp=0.5, patch_px=32, n_per_class=10, seed=3)
    tumour = [s for s in samples if s.label == 1]
    normal = [s for s in samples if s.label == 0]
    assert len(tumour) == 10 and len(normal) == 10
    assert {s.group for s in samples} == {"node"}
    side = round(int(np.ceil(1.25 * 32 * 0.5 / 0.243)) * 0.243 / 0.5)
    assert all(s.rgb.shape == (side, side, 3) for s in samples)
    for s in samples:
        x, y = map(int, s.name.rsplit("@", 1)[1].split(","))
        centre_x = x + 1.25 * 32 * 0.5 / 0.243 / 2
        assert (centre_x < 640) if s.label else (x >= 640)


def test_augment_produces_crops_of_the_right_size_and_keeps_white_white():
    rng = np.random.default_rng(0)
    img = np.full((130, 120, 3), 255, np.uint8)
    img[40:80, 40:80] = (120, 60, 150)
    crop = augment.augment(img, 96, rng)
    assert crop.shape == (96, 96, 3) and crop.dtype == np.uint8
    white = augment.stain_jitter(np.full((8, 8, 3), 255, np.uint8), rng)
    assert (white == 255).all()
    small = augment.random_crop(img[:50, :50], 96, rng)
    assert small.shape == (96, 96, 3)


def test_stain_jitter_strength_is_a_parameter():
    """Stronger jitter spreads the stain amounts of identical tissue further; the default is STAIN_JITTER."""
    from micromets import normalise

    tissue = np.full((64, 16, 16, 3), 0, np.uint8)
    tissue[...] = (150, 90, 170)  # one H&E-like colour
    def spread(stain):
        out = augment.augment_batch(list(tissue), 16, np.random.default_rng(0), stain)
        return normalise.optical_density(out).sum(axis=-1).mean(axis=(1, 2)).std()
    weak, default, strong = spread((0.1, 0.0)), spread(augment.STAIN_JITTER), spread((0.5, 0.1))
    assert weak < default < strong
    assert augment.STAIN_JITTER == (0.25, 0.05)  # the shipped model's recipe (model card "augmentation")


def test_stain_jitter_cast_adds_each_stain_to_the_residual_channel():
    """With ``cast`` the eosin of pure-eosin tissue shows up in the residual channel, by up to ±cast of itself;
    without it (the shipped recipes) there is none."""
    from micromets import normalise

    basis = normalise.complete_basis(normalise.REFERENCE_HE)
    od = 0.6 * basis[1]                                     # eosin only, in OD
    tissue = np.broadcast_to(np.round(255 * 10.0 ** -od).astype(np.uint8), (200, 4, 4, 3)).copy()

    def residual_per_eosin(cast):
        out = augment.stain_jitter(tissue, np.random.default_rng(0), sigma=0.0, bias=0.0, vector_sigma=0.0, cast=cast)
        amounts = normalise.optical_density(out).mean(axis=(1, 2)) @ np.linalg.inv(basis)
        return amounts[:, 2] / amounts[:, 1]

    assert np.abs(residual_per_eosin(0.0)).max() < 0.02     # 8-bit rounding only
    cast = residual_per_eosin(0.3)
    assert np.abs(cast).max() <= 0.32 and cast.min() < -0.2 and cast.max() > 0.2


def test_train_command_refuses_a_bad_stain_jitter(tmp_path, shared_data):
    cmd = [sys.executable, "-c", "import sys; from micromets.cli import main; sys.argv[0] = 'micromets'; main()",
           "train", "--folder", f"{shared_data / 'camelyon16_patches'}@0.243", "--stain-jitter", "0.5",
           "--out", str(tmp_path / "m")]
    run = subprocess.run(cmd, capture_output=True, text=True, env={"PYTHONPATH": REPO_SRC, "PATH": "/usr/bin"},
                         timeout=300)
    assert run.returncode == 2 and "--stain-jitter '0.5': write SIGMA,VECTOR_SIGMA[,CAST]" in run.stderr and not (tmp_path / "m").exists()


def test_the_eight_dihedral_transforms_are_distinct():
    x = np.arange(4 * 4 * 3, dtype=np.uint8).reshape(4, 4, 3)
    outs = {augment.dihedral(x, k).tobytes() for k in range(8)}
    assert len(outs) == 8


def test_binary_metrics_operating_points():
    y = np.array([0] * 20 + [1] * 4)
    p = np.r_[np.linspace(0.0, 0.5, 19), 0.9, [0.95, 0.8, 0.6, 0.3]]
    m = fit.binary_metrics(y, p, threshold=0.5)
    # 5 % of 20 normals = 1 normal may score at or above the threshold: 0.9 is allowed, 0.5 is not
    assert m["threshold_at_95_specificity"] == pytest.approx(np.nextafter(0.5, 1))
    assert m["sensitivity_at_95_specificity"] == 0.75
    assert m["confusion"] == {"tp": 3, "fn": 1, "fp": 2, "tn": 18}  # 0.5 >= 0.5 counts as tumour
    assert 0.8 < m["auc"] < 1.0


def test_sampling_weights_balance_classes_and_sources():
    s = [data.Sample(np.zeros((1, 1, 3), np.uint8), lab, "g", src, "") for lab, src in
         [(1, "a")] * 3 + [(0, "a")] * 10 + [(0, "b")] * 2]
    w = fit.sampling_weights(s)
    assert w[:3].sum() == pytest.approx(0.5)
    assert w[3:13].sum() == pytest.approx(0.25) and w[13:].sum() == pytest.approx(0.25)


def test_short_real_training_exports_onnx_equal_to_torch(tmp_path, shared_data):
    import torch

    torch.set_num_threads(2)
    every = data.load_folder_per_class(shared_data / "camelyon16_patches", 0.243, 0.5, "camelyon16")
    subset = fit.normalise_by_group([s for s in every if s.label][:8] + [s for s in every if not s.label][:8])
    model = fit.train_cnn(subset, patch_px=64, steps=4, batch=16, width=4, seed=0, log=lambda m: None)
    card = fit.base_card("test", "0", 0.5, 64, 4)
    card.update({"training_data": [], "split": {}, "metrics": {}, "date": "", "command": "", "licence": ""})
    diff = fit.export_onnx(model, tmp_path, card, patch_px=64)
    assert diff < 1e-4
    det = Detector.load(tmp_path)
    raw = np.stack([augment.center_crop(s.rgb, 64) for s in every[:12]])
    det.set_stain_reference(raw)
    seen_by_net = det.normalise(raw)
    np.testing.assert_allclose(det.predict(raw), fit.predict_cnn(model, seen_by_net), atol=1e-4)
    # the same seed gives the same weights
    again = fit.train_cnn(subset, patch_px=64, steps=4, batch=16, width=4, seed=0, log=lambda m: None)
    for a, b in zip(model.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)


def test_train_command_writes_model_and_card(tmp_path, shared_data):
    out = tmp_path / "m"
    cmd = [sys.executable, "-c", "import sys; from micromets.cli import main; sys.argv[0] = 'micromets'; main()",
           "train", "--folder", f"{shared_data / 'camelyon16_patches'}@0.243", "--patch-px", "64", "--width", "4",
           "--steps", "3", "--cv-groups", "tumor_064", "--out", str(out)]
    run = subprocess.run(cmd, capture_output=True, text=True, env={"PYTHONPATH": REPO_SRC, "PATH": "/usr/bin"},
                         timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    card = json.loads((out / "model.json").read_text())
    assert card["patch_px"] == 64 and card["input_mpp"] == 0.5
    assert card["metrics"]["held_out"]["n_tumour"] == 4 and card["metrics"]["held_out"]["n_normal"] == 22
    assert card["command"].startswith("micromets train --folder")
    assert card["split"]["final_model_trained_on"]["camelyon16_patches"]["tumor_001"] == {"tumour": 24, "normal": 0}
    assert Detector.load(out).patch_px == 64
    bad = subprocess.run(cmd[:4] + ["--folder", "nowhere", "--out", str(out)], capture_output=True, text=True,
                         env={"PYTHONPATH": REPO_SRC, "PATH": "/usr/bin"}, timeout=120)
    assert bad.returncode == 2 and "PATH@MPP" in bad.stderr


def test_morphometry_family_exports_onnx_equal_to_numpy(tmp_path, shared_data):
    from micromets import morphometry
    from micromets.train import morpho

    every = data.load_folder_per_class(shared_data / "camelyon16_patches", 0.243, 0.5, "camelyon16")
    subset = fit.normalise_by_group(every[::5])
    x, y = morpho.feature_rows(subset, 96, 0.5, crops_per_sample=1, seed=0)
    assert x.shape == (len(subset), len(morphometry.FEATURES))
    params = morpho.fit_logistic(x, y, morpho.source_weights(subset, 1))
    card = fit.base_card("m", "0", 0.5, 96, 0)
    card.update(morpho.morphometry_card_fields())
    morpho.export_onnx(params, tmp_path, card)
    det = Detector.load(tmp_path)
    raw = np.stack([augment.center_crop(s.rgb, 96) for s in every[:10]])
    det.set_stain_reference(raw)
    expect = morpho.predict_logistic(params, morphometry.patch_features(det.normalise(raw), 0.5))
    np.testing.assert_allclose(det.predict(raw), expect, atol=1e-5)
