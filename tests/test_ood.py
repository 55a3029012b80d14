"""The out-of-distribution checks (micromets.ood) on real slides and tiles: the skin SVS is not lymph node, the
demo nodes are, and a tile re-stained far from the model's reference is flagged."""

import numpy as np
import pytest
from PIL import Image

from micromets import normalise, ood
from micromets.analyze import stain_sample
from micromets.slide import open_slide
from micromets.tissue import tissue_mask

from conftest import REPO

MPP = 0.5
PATCH_PX = 96


def _slide_checks(path) -> dict:
    with open_slide(path) as slide:
        sample = stain_sample(slide, tissue_mask(slide), MPP, PATCH_PX)
    return ood.ood_checks(sample, MPP, normalise.REFERENCE_HE)


def test_skin_svs_is_flagged_as_not_lymph_node(shared_data):
    checks = _slide_checks(shared_data / "slides" / "cmu_small_region.svs")
    assert checks["tissue"]["flagged"] and checks["flagged"]
    assert checks["tissue"]["value_share"] < ood.LYMPH_SHARE_MIN
    assert "less than the 45% every lymph node measured had" in checks["tissue"]["reason"]


@pytest.mark.parametrize("node", ["node1", "node2", "node3"])
def test_demo_nodes_are_not_flagged(node):
    checks = _slide_checks(REPO / "demo" / "slides" / f"{node}.tiff")
    assert not checks["flagged"], checks


def _tile_patches(path, tile_mpp: float) -> np.ndarray:
    img = Image.open(path).convert("RGB")
    scale = tile_mpp / MPP
    rgb = np.asarray(img.resize((round(img.width * scale), round(img.height * scale)), Image.BILINEAR))
    n_y, n_x = rgb.shape[0] // PATCH_PX, rgb.shape[1] // PATCH_PX
    return (rgb[:n_y * PATCH_PX, :n_x * PATCH_PX].reshape(n_y, PATCH_PX, n_x, PATCH_PX, 3)
            .swapaxes(1, 2).reshape(-1, PATCH_PX, PATCH_PX, 3))


def _rotate(vectors: np.ndarray, axis: np.ndarray, deg: float) -> np.ndarray:
    """Rotate OD vectors (rows) about ``axis`` by ``deg`` (Rodrigues), kept in the positive octant."""
    k = axis / np.linalg.norm(axis)
    t = np.radians(deg)
    rot = (np.cos(t) * np.eye(3) + np.sin(t) * np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
           + (1 - np.cos(t)) * np.outer(k, k))
    out = np.abs(vectors @ rot.T)
    return (out / np.linalg.norm(out, axis=1, keepdims=True)).astype(np.float32)


def test_restained_tile_is_flagged_and_the_original_is_not(shared_data):
    patches = _tile_patches(shared_data / "camelyon17_tiles" / "centre_0_patient_006_node_1.jpeg", 0.24)[:32]
    original = ood.ood_checks(patches, MPP, normalise.REFERENCE_HE)
    assert not original["stain"]["flagged"] and not original["flagged"]
    source_he = normalise.macenko_stain_matrix(patches)
    turned_he = _rotate(source_he, np.array([1.0, 0.0, 0.0]), 25.0)  # red kept: H stays H
    restained = normalise.apply_stain_transform(patches, normalise.stain_transform(source_he, turned_he))
    checks = ood.ood_checks(restained, MPP, normalise.REFERENCE_HE)
    assert checks["stain"]["value_deg"] > ood.STAIN_ANGLE_MAX_DEG, checks["stain"]
    assert checks["stain"]["flagged"] and checks["flagged"]
    assert "further off" in checks["stain"]["reason"]


def test_stain_angle_is_the_larger_of_the_two_angles():
    ref = normalise.REFERENCE_HE
    assert ood.stain_angle_deg(ref, ref) == pytest.approx(0.0, abs=1e-3)
    t = np.radians(25.0)
    source = np.array([[1.0, 0.0, 0.0], [0.0, np.cos(t), np.sin(t)]])
    assert ood.stain_angle_deg(source, np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])) == pytest.approx(25.0)
    assert ood.stain_angle_deg(source, np.array([[0.0, 1.0, 0.0], [0.0, 1.0, 0.0]])) == pytest.approx(90.0)
