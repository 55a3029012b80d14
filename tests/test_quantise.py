"""bench/quantise.py: INT8 static quantisation of the shipped detector, calibrated and checked on real tissue."""

import sys
from pathlib import Path

import numpy as np
import pytest

from micromets.model import Detector, default_model_dir

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import quantise  # noqa: E402


def cpu_has_vnni() -> bool:
    """True on CPUs with VNNI (AVX512-VNNI or AVX-VNNI): onnxruntime's u8·s8 kernels then add in 32 bits."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_vnni" in flags or "avx_vnni" in flags


@pytest.fixture(scope="module")
def real(shared_data):
    """A float detector of the shipped family (the default is itself INT8: models/without-tumor_064 is the same
    architecture in float), calibration inputs from the real SVS slide (grid shifted by half a patch) and the
    CAMELYON16 tiles cut as the detector cuts them."""
    det = Detector.load(default_model_dir().parent / "without-tumor_064", threads=1)
    assert "quantisation" not in det.card
    patches, lut = quantise.slide_patches(det, shared_data / "slides" / "cmu_small_region.svs", det.cell_um / 2)
    x_calib = quantise.network_input(det, {"patches": patches, "lut": lut})
    tiles = [im for im in quantise.tile_images(shared_data) if im["source"] == "camelyon16"]
    entries = []
    for image in tiles:
        patches, lut = quantise.tile_patches(det, image)
        entries.append({**image, "patches": patches, "lut": lut})
    return det, x_calib, entries


@pytest.mark.parametrize("weights, keep_float, max_dp", [("s8-7bit", ("first", "last"), 0.05), ("s8", (), None)])
def test_int8_graph_tracks_the_float_model_unless_full_range_weights_saturate(real, tmp_path, weights, keep_float,
                                                                             max_dp):
    """7-bit weights with the first and last layers in float stay within 0.05 of the float probability on every
    CAMELYON16 window; full-range int8 weights everywhere saturate onnxruntime's AVX2 u8·s8 kernel (or lose
    precision in the 3-channel first layer) and move some window by more than that. VNNI has no 16-bit pair
    sums (seen on AMD EPYC with AVX512-VNNI: full-range weights moved no window by more than 0.032), so there the
    saturation case is skipped."""
    if max_dp is None and cpu_has_vnni():
        pytest.skip("this CPU has VNNI: onnxruntime's u8*s8 kernel cannot saturate here")
    det, x_calib, entries = real
    assert len(x_calib) >= 200
    (tmp_path / "model.json").write_text((det.model_dir / "model.json").read_text())
    quantise.quantise(det.model_dir / "model.onnx", tmp_path / "model.onnx", x_calib, "minmax", keep_float, weights)
    det_int8 = Detector.load(tmp_path, threads=1)
    p_float = np.concatenate(quantise.probabilities(det, entries))
    p_int8 = np.concatenate(quantise.probabilities(det_int8, entries))
    labels = np.array([e["label"] for e in entries])
    diff = np.abs(p_int8 - p_float).max()
    if max_dp is not None:
        assert diff < max_dp
        tile_float = [p.max() for p in quantise.probabilities(det, entries)]
        tile_int8 = [p.max() for p in quantise.probabilities(det_int8, entries)]
        assert abs(quantise.auc(np.array(tile_int8), labels) - quantise.auc(np.array(tile_float), labels)) <= 0.005
    else:
        assert diff > 0.05


def test_shipped_default_is_the_checked_int8_graph():
    """The default model's card states its quantisation and the checks it passed; its graph holds QDQ nodes."""
    import onnx

    card = Detector.load(threads=1).card
    q = card["quantisation"]
    assert q["evaluation"]["flip_share"] <= 0.005 and q["evaluation"]["max_abs_dp"] < 0.05  # 2 of 1,235 patches
    assert q["demo_case_agrees"] == {"thorough": True, "fast": True}
    ops = {n.op_type for n in onnx.load(str(default_model_dir() / "model.onnx")).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops


def test_auc_counts_ties_as_one_half():
    assert quantise.auc(np.array([0.9, 0.5, 0.5]), np.array([1, 1, 0])) == pytest.approx(0.75)
    assert quantise.auc(np.array([0.1, 0.9]), np.array([1, 0])) == 0.0
