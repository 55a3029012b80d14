"""bench/stain_casts.py: the training's stain estimate with and without ink, and the two-stain rebuild."""

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import stain_casts  # noqa: E402

from micromets import normalise  # noqa: E402


def _he_image(rng, shape=(80, 80)):
    """Tissue mixed from the reference haematoxylin and eosin only (no residual), as uint8 RGB."""
    amounts = rng.uniform(0.05, 0.9, size=shape + (2,))
    od = amounts @ normalise.REFERENCE_HE
    return np.clip(255 * 10.0 ** -od + 0.5, 0, 255).astype(np.uint8)


def test_ink_turns_the_pooled_haematoxylin_vector_and_the_ink_free_estimate_does_not():
    rng = np.random.default_rng(0)
    clean = [_he_image(rng) for _ in range(4)]
    inked = [im.copy() for im in clean]
    for im in inked:
        im[:30, :30] = (25, 25, 28)      # black marking ink, a corner of each tile
        im[30:33, :33] = (60, 58, 62)    # its darker fringe, still ink by the pixel rule
    ref = normalise.REFERENCE_HE
    pooled = stain_casts.estimate(inked, without_ink=False)
    clean_estimate = stain_casts.estimate(inked, without_ink=True)
    assert stain_casts.degrees(pooled[0], ref[0]) > 5.0
    assert stain_casts.degrees(clean_estimate[0], ref[0]) < 2.0 and stain_casts.degrees(clean_estimate[1], ref[1]) < 2.0


def test_the_two_stain_rebuild_keeps_haematoxylin_and_eosin_and_drops_the_residual():
    basis = normalise.complete_basis(normalise.REFERENCE_HE).astype(np.float64)
    transform = stain_casts.two_stain_transform(normalise.REFERENCE_HE)
    stains = np.array([[0.4, 0.3, 0.0], [0.0, 0.0, 0.3]]) @ basis     # H + E; residual only
    out = stains @ transform
    assert np.allclose(out[0], stains[0], atol=1e-5) and np.allclose(out[1], 0.0, atol=1e-5)


def test_the_red_green_unmixing_rebuilds_h_and_e_and_ignores_the_blue_channel():
    """A source basis other than the reference: H and E amounts come back on the reference vectors; any blue
    absorbance added (a cast, a scanner's blue) changes nothing."""
    source = np.array([[0.62, 0.72, 0.30], [0.20, 0.90, 0.40]])
    source /= np.linalg.norm(source, axis=1, keepdims=True)
    transform = stain_casts.red_green_transform(source)
    amounts = np.array([[0.4, 0.3], [0.0, 0.5], [1.1, 0.0]])
    ref = normalise.complete_basis(normalise.REFERENCE_HE)[:2]
    od = amounts @ source
    assert np.allclose(od @ transform, amounts @ ref, atol=1e-5)
    bluer = od + np.array([0.0, 0.0, 0.25])
    assert np.allclose(bluer @ transform, od @ transform, atol=1e-6)


def test_residual_per_eosin_is_zero_for_pure_h_and_e_and_reads_a_cast():
    rng = np.random.default_rng(1)
    images = [_he_image(rng) for _ in range(3)]
    assert abs(stain_casts.residual_per_eosin(images)["p50"]) < 0.02
    basis = normalise.complete_basis(normalise.REFERENCE_HE)
    eosin = 0.6 * basis[1] + 0.12 * basis[2]                         # eosin with a cast of +0.2 of itself
    cast = np.broadcast_to(np.clip(255 * 10.0 ** -eosin + 0.5, 0, 255).astype(np.uint8), (40, 40, 3)).copy()
    assert abs(stain_casts.residual_per_eosin([cast])["p50"] - 0.2) < 0.03
