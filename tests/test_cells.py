"""Nuclei count on images with a known number of nuclei, and on real CAMELYON16 lymph-node patches."""

import numpy as np
import pytest
from skimage.color import hed2rgb
from skimage.draw import disk
from skimage.io import imread

from micromets.cells import count_nuclei
from micromets.errors import MicrometsError

MPP = 0.25


def stained_image(centres, radius_um=4.0, shape=(400, 400)):
    """H&E-like image: haematoxylin discs (nuclei) on a light eosin background, built in HED space."""
    hed = np.zeros(shape + (3,))
    hed[..., 1] = 0.05  # eosin background
    for centre in centres:
        hed[disk(centre, radius_um / MPP, shape=shape) + (0,)] = 0.5
    return (np.clip(hed2rgb(hed), 0, 1) * 255).astype(np.uint8)


def test_counts_separate_and_touching_nuclei():
    rng = np.random.default_rng(3)
    grid = [(r, c) for r in range(40, 400, 60) for c in range(40, 400, 60)]  # 36 nuclei, 15 µm apart
    image = stained_image(grid)
    assert count_nuclei(image, MPP) == 36
    # two nuclei that touch (centres 7 µm apart, radius 4 µm) are split by the watershed
    pair = stained_image([(200, 186), (200, 214)])
    assert count_nuclei(pair, MPP) == 2
    jitter = [(r + rng.integers(-5, 5), c + rng.integers(-5, 5)) for r, c in grid]
    assert count_nuclei(stained_image(jitter), MPP) == 36


def test_mask_limits_the_count_and_blank_is_zero():
    image = stained_image([(r, c) for r in range(40, 400, 60) for c in range(40, 400, 60)])
    mask = np.zeros(image.shape[:2], dtype=bool)
    mask[:200, :] = True  # rows 40, 100, 160: 3 rows of 6
    assert count_nuclei(image, MPP, mask) == 18
    assert count_nuclei(np.full((300, 300, 3), 240, np.uint8), MPP) == 0
    assert count_nuclei(image, MPP, np.zeros(image.shape[:2], bool)) == 0


def test_real_lymph_node_patches(shared_data):
    """A 62 µm field of lymph node holds tens of lymphocyte nuclei (6-8 µm, densely packed)."""
    counts = [
        count_nuclei(imread(path)[..., :3], 0.243)
        for path in sorted((shared_data / "camelyon16_patches" / "normal").glob("*.png"))[:6]
    ]
    assert all(15 <= n <= 120 for n in counts), counts


@pytest.mark.parametrize(
    ("image", "mpp", "mask"),
    [
        (np.zeros((10, 10)), 0.25, None),
        (np.zeros((10, 10, 3), np.uint8), 2.0, None),
        (np.zeros((10, 10, 3), np.uint8), 0.25, np.ones((5, 5), bool)),
    ],
)
def test_bad_inputs(image, mpp, mask):
    with pytest.raises(MicrometsError):
        count_nuclei(image, mpp, mask)
