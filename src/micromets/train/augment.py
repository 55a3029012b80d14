"""Augmentation that matters in pathology, on uint8 RGB numpy images (one crop at a time, seeded generator).

- random crop with scale jitter (±10 %, i.e. ±10 % in µm/px) and reflection padding when the image is smaller;
- the 8 dihedral transforms (tissue has no orientation);
- haematoxylin–eosin–residual stain jitter in optical density (Tellez et al. 2018, "Whole-slide mitosis detection
  in H&E breast histology using PHH3 as a reference to train distilled stain-invariant convolutional networks",
  IEEE TMI 37:2126, doi:10.1109/TMI.2018.2820199): each stain concentration scaled by U(1-σ, 1+σ) and shifted by
  U(-b, b), and the stain vectors themselves perturbed, which imitates an imperfect stain normalisation
  (strength :data:`STAIN_JITTER` unless the caller gives its own; docs/model.md compares 0.25/0.05 with 0.5/0.1);
  optionally each stain also adds U(-cast, cast) of its own amount to the residual channel: the colour cast
  that a normalisation leaves on a source whose stains lie off its estimated plane (median residual per eosin after
  the training's normalisation: -0.05 to +0.22 across the sources, bench/stain_casts.py, docs/model.md "Stain
  casts"; training with casts of ±0.3 was measured and not adopted there);
- brightness and contrast, and Gaussian blur (out-of-focus scans).
"""

from __future__ import annotations

import numpy as np
from PIL import Image
from scipy import ndimage

from micromets import normalise

#: (σ, vector σ) of :func:`stain_jitter`: concentrations × U(1 - σ, 1 + σ), stain-vector components + N(0, vector σ)
STAIN_JITTER = (0.25, 0.05)


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


def stain_jitter(rgb: np.ndarray, rng: np.random.Generator, sigma: float = STAIN_JITTER[0], bias: float = 0.05,
                 vector_sigma: float = STAIN_JITTER[1], basis_he: np.ndarray = normalise.REFERENCE_HE,
                 cast: float = 0.0) -> np.ndarray:
    """Random stain concentrations and stain vectors for each image of a (N, H, W, 3) batch (or one image).

    ``basis_he`` is the images' stain basis (after normalisation: the reference). ``cast``: haematoxylin and eosin
    each add U(-cast, cast) of their amount to the residual channel (a colour cast; 0: none, the random numbers
    drawn are then exactly those of earlier versions). See the module docstring.
    """
    batch = rgb if rgb.ndim == 4 else rgb[None]
    n = len(batch)
    src_inv = np.linalg.inv(normalise.complete_basis(basis_he).astype(np.float64))
    transforms, shifts = np.empty((n, 3, 3), np.float32), np.empty((n, 1, 3), np.float32)
    for i in range(n):
        dst_he = np.abs(np.asarray(basis_he, np.float64) + rng.normal(0.0, vector_sigma, size=(2, 3)))
        dst = normalise.complete_basis(dst_he).astype(np.float64)
        mix = np.diag(rng.uniform(1.0 - sigma, 1.0 + sigma, size=3))
        if cast:
            mix[0, 2], mix[1, 2] = rng.uniform(-cast, cast, size=2)
        transforms[i] = src_inv @ mix @ dst
        shifts[i, 0] = (rng.uniform(-bias, bias, size=3) * np.array([1.0, 1.0, 0.2])) @ dst
    od = normalise.optical_density(batch).reshape(n, -1, 3)
    tissue = (od.sum(axis=-1, keepdims=True) > 0.15).astype(np.float32)  # no colour added to white background
    od_new = tissue * shifts  # (N, pixels, 3); a 3×3 product per image, written out (faster than batched matmul)
    for k in range(3):
        od_new += od[:, :, k:k + 1] * transforms[:, None, k, :]
    od_new = np.clip(od_new, 0.0, 3.0)
    out = np.clip(255.0 * np.exp(np.float32(-np.log(10.0)) * od_new) + 0.5, 0, 255).astype(np.uint8)
    return out.reshape(batch.shape) if rgb.ndim == 4 else out.reshape(rgb.shape)


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
    return augment_batch([rgb], size_px, rng)[0]


def parse_stain(text: str) -> tuple[float, ...]:
    """``"SIGMA,VECTOR_SIGMA[,CAST]"`` (the ``--stain-jitter`` of the training commands) → the numbers that
    :func:`augment_batch` takes as ``stain``; ValueError, saying what is accepted, when it is not that."""
    try:
        numbers = tuple(float(v) for v in text.split(","))
    except ValueError:
        numbers = ()
    if len(numbers) not in (2, 3) or not all(np.isfinite(numbers)) or not (
            0 <= numbers[0] < 1 and numbers[1] >= 0 and (len(numbers) == 2 or 0 <= numbers[2] <= 1)):
        raise ValueError("write SIGMA,VECTOR_SIGMA[,CAST] with 0 <= SIGMA < 1, VECTOR_SIGMA >= 0 and 0 <= CAST <= 1, "
                         "e.g. 0.25,0.05")
    return numbers


def describe(stain: tuple[float, ...]) -> str:
    """The stain augmentation in words, for a model card: ``stain`` as :func:`augment_batch` takes it."""
    cast = f", residual cast ±{stain[2]}" if len(stain) > 2 else ""
    return f"H/E stain jitter (σ {stain[0]}, vectors σ {stain[1]}{cast})"


def augment_batch(images: list[np.ndarray], size_px: int, rng: np.random.Generator,
                  stain: tuple[float, ...] = STAIN_JITTER) -> np.ndarray:
    """Augment each image of a list (stain-normalised, any sizes) → (N, size_px, size_px, 3) uint8.

    ``stain``: (σ, vector σ) or (σ, vector σ, cast) of :func:`stain_jitter`.
    """
    crops = np.stack([dihedral(random_crop(im, size_px, rng), int(rng.integers(0, 8))) for im in images])
    crops = stain_jitter(crops, rng, sigma=stain[0], vector_sigma=stain[1], cast=stain[2] if len(stain) > 2 else 0.0)
    return np.stack([blur(brightness_contrast(c, rng), rng) for c in crops])
