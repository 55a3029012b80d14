"""Nuclear morphometry features: counts, areas in µm², hollowness, per-patch independence, real-data direction."""

import numpy as np
import pytest
from PIL import Image

from micromets import morphometry, normalise


def _paint(discs, p=96, ring=False):
    """A white patch with haematoxylin discs (reference stain vector, OD 0.8) at (y, x, radius_px)."""
    yy, xx = np.mgrid[0:p, 0:p]
    conc = np.zeros((p, p))
    for y, x, r in discs:
        d = np.hypot(yy - y, xx - x)
        conc[(d <= r) & ((d >= r - 2) if ring else True)] = 0.8
    od = conc[..., None] * normalise.REFERENCE_HE[0]
    return np.clip(255 * 10 ** (-od) + 0.5, 0, 255).astype(np.uint8)


def _f(x, name):
    return x[:, morphometry.FEATURES.index(name)]


def test_counts_and_areas_of_painted_nuclei():
    mpp = 0.5
    small = _paint([(20, 20, 5), (20, 60, 5), (60, 20, 5), (60, 60, 5)])       # r 2.5 µm → 19.6 µm²
    large = _paint([(30, 30, 10), (70, 70, 10)])                               # r 5 µm → 78.5 µm²
    f = morphometry.patch_features(np.stack([small, large]), mpp)
    field_mm2 = (96 * mpp / 1000) ** 2
    np.testing.assert_allclose(_f(f, "nuclei_per_mm2") * field_mm2, [4, 2])
    # the σ 0.5 µm smoothing before the threshold widens a small outline by ≈ 0.5 px: +30 % area at r 2.5 µm
    assert _f(f, "nucleus_area_mean_um2")[0] == pytest.approx(np.pi * 2.5 ** 2, rel=0.35)
    assert _f(f, "nucleus_area_mean_um2")[1] == pytest.approx(np.pi * 5.0 ** 2, rel=0.15)
    np.testing.assert_allclose(_f(f, "large_nucleus_fraction"), [0, 1])


def test_rim_nuclei_are_filled_and_counted_as_hollow():
    f = morphometry.patch_features(np.stack([_paint([(48, 48, 12)]), _paint([(48, 48, 12)], ring=True)]), 0.5)
    assert _f(f, "nucleus_area_mean_um2")[1] == pytest.approx(_f(f, "nucleus_area_mean_um2")[0], rel=0.1)
    assert _f(f, "nucleus_hollowness")[0] < 0.05 < 0.5 < _f(f, "nucleus_hollowness")[1]


def test_patches_do_not_leak_into_each_other():
    edge = _paint([(95, 48, 6)])         # a nucleus touching the bottom edge
    top = _paint([(0, 48, 6)])           # and one touching the top edge of the next patch
    both = morphometry.patch_features(np.stack([edge, top]), 0.5)
    alone = np.vstack([morphometry.patch_features(edge[None], 0.5), morphometry.patch_features(top[None], 0.5)])
    np.testing.assert_allclose(both, alone)


def test_real_lymphocytes_are_denser_than_real_tumour(shared_data):
    """The direction the issue reports: nuclear density separates lymph-node normal from tumour patches."""
    def load(kind):
        paths = sorted((shared_data / "camelyon16_patches" / kind).glob("*.png"))
        rgb = np.stack([np.asarray(Image.open(p).convert("RGB").resize((124, 124), Image.LANCZOS))[14:110, 14:110]
                        for p in paths])
        return normalise.macenko_normalise(rgb)
    t, n = morphometry.patch_features(load("tumor"), 0.5), morphometry.patch_features(load("normal"), 0.5)
    assert np.median(_f(n, "nuclei_per_mm2")) > 1.5 * np.median(_f(t, "nuclei_per_mm2"))
    assert morphometry.patch_features(np.zeros((0, 96, 96, 3), np.uint8), 0.5).shape == (0, len(morphometry.FEATURES))
