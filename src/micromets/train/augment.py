"""Augmentation that matters in pathology, on uint8 RGB numpy images (one crop at a time, seeded generator).

- random crop with scale jitter (±10 %, i.e. ±10 % in µm/px) and reflection padding when the image is smaller;
- the 8 dihedral transforms (tissue has no orientation);
- haematoxylin–eosin–residual stain jitter in optical density (Tellez et al. 2018, "Whole-slide mitosis detection
  in H&E breast histology using PHH3 as a reference to train distilled stain-invariant convolutional networks",
  IEEE TMI 37:2126, doi:10.1109/TMI.2018.2820199): each stain concentration scaled by U(1-σ, 1+σ) and shifted by
  U(-b, b), and the stain vectors themselves perturbed, which imitates an imperfect stain normalisation;
- brightness and contrast, and Gaussian blur (out-of-focus scans).
"""

from __future__ import annotations

import numpy as np
from PIL import Image
from scipy import ndimage

from micromets import normalise


def random_crop(rgb: np.ndarray, size_px: int, rng: np.random.Generator, scale: float = 0.1) -> np.ndarray:
    """A ``size_px`` square crop covering ``size_px × U(1-scale, 1+scale)`` source pixels, resized to ``size_px``."""
    side = max(8, int(round(size_px * rng.uniform(1.0 - scale, 1.0 + scale))))
    h, w = rgb.shape[:2]
    if h < side or w < side:
        pad_y, pad_x = max(0, side - h), max(0, side - w)
        rgb = np.pad(rgb, ((pad_y // 2, pad_y - pad_y // 2), (pad_x // 2, pad_x - pad_x // 2), (0, 0)), mode="reflect")
        h, w = rgb.shape[:2]
    y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
    crop = rgb[y:y + side, x:x + side]
    if side != size_px:
        crop = np.asarray(Image.fromarray(crop).resize((size_px, size_px), Image.Resampling.BILINEAR))
    return crop


def center_crop(rgb: np.ndarray, size_px: int) -> np.ndarray:
    """The central ``size_px`` square (reflection-padded when the image is smaller)."""
    h, w = rgb.shape[:2]
    pad_y, pad_x = max(0, size_px - h), max(0, size_px - w)
    if pad_y or pad_x:
        rgb = np.pad(rgb, ((pad_y // 2, pad_y - pad_y // 2), (pad_x // 2, pad_x - pad_x // 2), (0, 0)), mode="reflect")
        h, w = rgb.shape[:2]
    y, x = (h - size_px) // 2, (w - size_px) // 2
    return rgb[y:y + size_px, x:x + size_px]


def dihedral(rgb: np.ndarray, k: int) -> np.ndarray:
    """One of the 8 symmetries of the square: ``k % 4`` quarter turns, mirrored when ``k >= 4``."""
    out = np.rot90(rgb, k % 4)
    return np.ascontiguousarray(out[:, ::-1] if k >= 4 else out)


def stain_jitter(rgb: np.ndarray, rng: np.random.Generator, sigma: float = 0.25, bias: float = 0.05,
                 vector_sigma: float = 0.05, basis_he: np.ndarray = normalise.REFERENCE_HE) -> np.ndarray:
    """Random stain concentrations and stain vectors (see module docstring); ``basis_he`` = the image's basis."""
    src = normalise.complete_basis(basis_he).astype(np.float64)
    dst_he = np.abs(src[:2] + rng.normal(0.0, vector_sigma, size=(2, 3)))
    dst = normalise.complete_basis(dst_he).astype(np.float64)
    scale = np.diag(rng.uniform(1.0 - sigma, 1.0 + sigma, size=3))
    transform = np.linalg.inv(src) @ scale @ dst
    od = normalise.optical_density(rgb)
    tissue = (od.sum(axis=-1, keepdims=True) > 0.15).astype(np.float32)  # no colour added to white background
    shift = (rng.uniform(-bias, bias, size=3) * np.array([1.0, 1.0, 0.2])) @ dst
    od_new = np.clip(od @ transform.astype(np.float32) + tissue * shift.astype(np.float32), 0.0, 3.0)
    return np.clip(255.0 * np.exp(-np.log(10.0) * od_new) + 0.5, 0, 255).astype(np.uint8)


def brightness_contrast(rgb: np.ndarray, rng: np.random.Generator, brightness: float = 0.08,
                        contrast: float = 0.15) -> np.ndarray:
    """``(x - mean) × U(1±contrast) + mean + U(±brightness) × 255``."""
    x = rgb.astype(np.float32)
    mean = x.mean()
    x = (x - mean) * rng.uniform(1 - contrast, 1 + contrast) + mean + rng.uniform(-brightness, brightness) * 255
    return np.clip(x + 0.5, 0, 255).astype(np.uint8)


def blur(rgb: np.ndarray, rng: np.random.Generator, p: float = 0.3, max_sigma_px: float = 1.2) -> np.ndarray:
    """Gaussian blur with probability ``p``, σ ~ U(0.3, max_sigma_px) pixels."""
    if rng.random() >= p:
        return rgb
    sigma = rng.uniform(0.3, max_sigma_px)
    return ndimage.gaussian_filter(rgb, sigma=(sigma, sigma, 0), mode="reflect")


def augment(rgb: np.ndarray, size_px: int, rng: np.random.Generator) -> np.ndarray:
    """The full training augmentation of one (stain-normalised) image → a ``size_px`` uint8 crop."""
    crop = dihedral(random_crop(rgb, size_px, rng), int(rng.integers(0, 8)))
    crop = stain_jitter(crop, rng)
    crop = brightness_contrast(crop, rng)
    return blur(crop, rng)
