"""Stain normalisation: optical density, Macenko stain vectors, the OD-space mapping, tissue fraction."""

import numpy as np
import pytest
from PIL import Image

from micromets import normalise
from micromets.errors import MicrometsError

H_TRUE = np.array([0.65, 0.70, 0.29])
E_TRUE = np.array([0.07, 0.99, 0.11])


def _synthetic_he(n: int = 20_000, seed: int = 0) -> np.ndarray:
    """RGB pixels built by Beer–Lambert from known stain vectors and random concentrations."""
    rng = np.random.default_rng(seed)
    h = H_TRUE / np.linalg.norm(H_TRUE)
    e = E_TRUE / np.linalg.norm(E_TRUE)
    conc = rng.gamma(2.0, 0.35, size=(n, 2))
    od = conc[:, :1] * h + conc[:, 1:] * e
    return np.clip(255 * 10 ** (-od) + 0.5, 0, 255).astype(np.uint8).reshape(100, -1, 3)


def _angle_deg(a, b) -> float:
    a, b = np.asarray(a, float), np.asarray(b, float)
    return float(np.degrees(np.arccos(np.clip(a @ b / np.linalg.norm(a) / np.linalg.norm(b), -1, 1))))


def test_optical_density_of_white_is_zero_and_of_black_is_log10_255():
    od = normalise.optical_density(np.array([[[255, 255, 255], [0, 1, 128]]], dtype=np.uint8))
    assert od.dtype == np.float32
    assert od[0, 0].tolist() == [0.0, 0.0, 0.0]
    assert od[0, 1, 0] == pytest.approx(np.log10(255), abs=1e-6)
    assert od[0, 1, 1] == pytest.approx(np.log10(255), abs=1e-6)  # I = 0 is clipped to 1
    assert od[0, 1, 2] == pytest.approx(-np.log10(128 / 255), abs=1e-6)


def test_macenko_recovers_known_stain_vectors():
    he = normalise.macenko_stain_matrix(_synthetic_he())
    assert _angle_deg(he[0], H_TRUE) < 4.0
    assert _angle_deg(he[1], E_TRUE) < 4.0


def test_normalising_to_a_basis_then_estimating_gives_that_basis():
    rgb = _synthetic_he()
    out = normalise.macenko_normalise(rgb)  # onto REFERENCE_HE
    he = normalise.macenko_stain_matrix(out)
    assert _angle_deg(he[0], normalise.REFERENCE_HE[0]) < 4.0
    assert _angle_deg(he[1], normalise.REFERENCE_HE[1]) < 4.0


def test_identity_transform_leaves_image_unchanged(shared_data):
    rgb = np.asarray(Image.open(next((shared_data / "camelyon16_patches" / "tumor").glob("*.png"))).convert("RGB"))
    t = normalise.stain_transform(normalise.REFERENCE_HE, normalise.REFERENCE_HE)
    np.testing.assert_allclose(t, np.eye(3), atol=1e-5)
    assert np.abs(normalise.apply_stain_transform(rgb, t).astype(int) - rgb).max() <= 1


def test_real_centres_are_mapped_closer_to_the_reference(shared_data):
    """The five CAMELYON17 centres' stain vectors lie further from the reference before than after."""
    before, after = [], []
    for path in sorted((shared_data / "camelyon17_tiles").glob("*.jpeg")):
        rgb = np.asarray(Image.open(path).convert("RGB"))[::2, ::2]
        he = normalise.macenko_stain_matrix(rgb)
        before.append(_angle_deg(he[0], normalise.REFERENCE_HE[0]) + _angle_deg(he[1], normalise.REFERENCE_HE[1]))
        he2 = normalise.macenko_stain_matrix(normalise.macenko_normalise(rgb, source_he=he))
        after.append(_angle_deg(he2[0], normalise.REFERENCE_HE[0]) + _angle_deg(he2[1], normalise.REFERENCE_HE[1]))
    assert max(after) < 6.0
    assert np.mean(after) < np.mean(before)


def test_background_stays_white_and_blank_images_fall_back_to_the_reference():
    white = np.full((1, 32, 32, 3), 255, np.uint8)
    assert np.array_equal(normalise.macenko_stain_matrix(white), normalise.REFERENCE_HE)
    t = normalise.stain_transform(np.array([[0.7, 0.6, 0.3], [0.2, 0.9, 0.4]]))
    assert (normalise.apply_stain_transform(white, t) == 255).all()


def test_tissue_fraction_boundary_is_inclusive_at_beta():
    # every channel OD >= 0.15  <=>  I <= 255 * 10**-0.15 = 180.5, so 180 is tissue and 181 is not
    rgb = np.zeros((2, 1, 2, 3), np.uint8)
    rgb[0] = 180
    rgb[1, 0, 0] = 181
    rgb[1, 0, 1] = (100, 100, 181)
    np.testing.assert_array_equal(normalise.tissue_fraction(rgb, beta=0.15), [1.0, 0.0])


def test_ink_is_dark_and_unsaturated_and_haematoxylin_is_not():
    # brightest channel <= 80 and (max - min) / max <= 0.35, both inclusive
    pixels = [(80, 80, 80), (81, 81, 81), (80, 52, 80), (80, 51, 80), (12, 10, 8),  # ink, -, ink (0.35), -, ink
              (40, 20, 70), (70, 45, 110)]                                          # dark nuclei: never ink
    rgb = np.array(pixels, np.uint8).reshape(len(pixels), 1, 1, 3)
    np.testing.assert_array_equal(normalise.ink_fraction(rgb), [1, 0, 1, 0, 1, 0, 0])


def test_real_carcinoma_holds_no_ink(shared_data):
    """The measurement behind INK_MAX_VALUE / INK_MAX_SATURATION, on the real tumour patches (docs/model.md)."""
    rgb = np.stack([np.asarray(Image.open(p).convert("RGB"))
                    for p in sorted((shared_data / "camelyon16_patches" / "tumor").glob("*.png"))])
    assert normalise.ink_fraction(rgb).max() <= 0.002


@pytest.mark.parametrize("bad", [np.zeros((4, 4, 3), np.float32), np.zeros((4, 4), np.uint8), [[1, 2, 3]]])
def test_bad_input_raises_micromets_error(bad):
    with pytest.raises(MicrometsError, match="uint8 RGB"):
        normalise.optical_density(bad)


def test_lookup_table_matches_the_exact_map(shared_data):
    rgb = np.asarray(Image.open(shared_data / "camelyon17_tiles" / "centre_2_patient_056_node_1.jpeg")
                     .convert("RGB"))[:512, :512]
    t = normalise.stain_transform(normalise.macenko_stain_matrix(rgb))
    exact = normalise.apply_stain_transform(rgb, t).astype(int)
    fast = normalise.apply_stain_lut(rgb, normalise.stain_lut(t)).astype(int)
    assert np.abs(exact - fast).mean() < 1.5
    assert np.abs(exact - fast).max() <= 12
