"""Stain normalisation of H&E RGB images, in numpy (no torch): Macenko stain vectors mapped to a stated reference.

A slide's colour depends on the lab's staining and the scanner. The detector sees every image after it has been
mapped onto one reference stain basis, so that it learns morphology rather than one centre's colour.

Method (Macenko et al. 2009, "A method for normalizing histology slides for quantitative analysis", ISBI,
doi:10.1109/ISBI.2009.5193250), estimated from the image's (or slide's) own tissue:

1. optical density per channel, ``od = -log10(max(I, 1) / 255)`` (Beer–Lambert; I in 0..255);
2. tissue pixels are those whose every channel has ``od >= beta`` (default 0.15); background is left out;
3. the plane of the two largest eigenvectors of the tissue-OD covariance; the angles of the tissue pixels in that
   plane; the stain vectors are the directions at the ``alpha`` and ``100 - alpha`` angle percentiles (alpha = 1);
   haematoxylin is the one with the larger red-channel OD (it absorbs red, eosin hardly does);
4. a third, residual vector (their normalised cross product) completes an invertible 3×3 basis, so nothing of the
   image is thrown away (pigment, DAB, grey);
5. the image's OD is expressed in its own basis (concentrations) and rebuilt with the reference basis:
   ``od' = od @ inv(M_src) @ M_ref``, a fixed 3×3 linear map in OD space per source.

Only the stain *directions* are normalised; concentrations keep their absolute OD scale (no per-image 99th
percentile rescaling), because rescaling by a percentile makes a tumour-only patch look as dark as a
lymphocyte-rich one. Intensity variation is left to the detector's training augmentation.

When there are too few tissue pixels to estimate (``< min_pixels``) or the estimate is degenerate, the reference
basis itself is returned, i.e. the image is left unchanged.

The reference basis shipped with a model is stated in its model card (``stain_normalisation.target``).
"""

from __future__ import annotations

import numpy as np

from micromets.errors import MicrometsError

_OD_LUT = (-np.log10(np.maximum(np.arange(256, dtype=np.float64), 1.0) / 255.0)).astype(np.float32)

#: Haematoxylin and eosin OD unit vectors (rows; R, G, B) estimated with :func:`macenko_stain_matrix` from the
#: 57 CAMELYON16 lymph-node patches (tumor_001, tumor_004, tumor_064; CC0), pooled. Used when a model card
#: names no other target.
REFERENCE_HE = np.array([[0.5063, 0.7631, 0.4017], [0.2986, 0.8034, 0.5151]], dtype=np.float32)


def optical_density(rgb: np.ndarray) -> np.ndarray:
    """Optical density per channel, float32 of the same shape as the uint8 RGB input (``-log10(max(I,1)/255)``)."""
    _check_rgb(rgb)
    return _OD_LUT[rgb]


def tissue_fraction(rgb: np.ndarray, beta: float = 0.15) -> np.ndarray:
    """Fraction of pixels that are stained tissue (every channel OD >= ``beta``), per image of a (N, H, W, 3) batch."""
    _check_rgb(rgb)
    if rgb.ndim != 4:
        raise MicrometsError(f"tissue_fraction expects a (N, H, W, 3) batch, got shape {rgb.shape}")
    # OD >= beta for every channel  <=>  the brightest channel is dark enough
    i_max = int(np.floor(255.0 * 10.0 ** (-beta)))
    brightest = np.maximum(np.maximum(rgb[..., 0], rgb[..., 1]), rgb[..., 2])
    return (brightest <= i_max).mean(axis=(1, 2))


#: ink or black pigment (marking ink on a cut surface, tattoo or anthracotic pigment, cautery char): a pixel whose
#: brightest channel is at most INK_MAX_VALUE (0-255) and whose saturation ``(max - min) / max`` is at most
#: INK_MAX_SATURATION. Haematoxylin, even in the darkest nucleus, is blue-violet (saturation well above 0.35);
#: measured 2026-12-07 on 96 px windows at 0.5 µm/px: no window of CAMELYON16, MoNuSeg, BreCaHAD or colorectal
#: carcinoma holds more than 0.1 % such pixels, while BACH A03's inked edges hold up to 97 % (docs/model.md).
INK_MAX_VALUE, INK_MAX_SATURATION = 80, 0.35


def ink_pixels(rgb: np.ndarray) -> np.ndarray:
    """Bool map of the pixels that are ink or black pigment (:data:`INK_MAX_VALUE`, :data:`INK_MAX_SATURATION`) of
    uint8 RGB (any leading shape, last axis 3)."""
    _check_rgb(rgb)
    brightest = np.maximum(np.maximum(rgb[..., 0], rgb[..., 1]), rgb[..., 2]).astype(np.int16)
    darkest = np.minimum(np.minimum(rgb[..., 0], rgb[..., 1]), rgb[..., 2]).astype(np.int16)
    return (brightest <= INK_MAX_VALUE) & (100 * (brightest - darkest) <= round(100 * INK_MAX_SATURATION) * brightest)


def ink_fraction(rgb: np.ndarray) -> np.ndarray:
    """Fraction of pixels that are ink or black pigment (:func:`ink_pixels`), per image of a (N, H, W, 3) uint8
    batch."""
    _check_rgb(rgb)
    if rgb.ndim != 4:
        raise MicrometsError(f"ink_fraction expects a (N, H, W, 3) batch, got shape {rgb.shape}")
    return ink_pixels(rgb).mean(axis=(1, 2))


def complete_basis(stains_he: np.ndarray) -> np.ndarray:
    """3×3 basis (rows): the two unit stain vectors and their normalised cross product (residual channel)."""
    he = np.asarray(stains_he, dtype=np.float64)
    he = he / np.linalg.norm(he, axis=1, keepdims=True)
    third = np.cross(he[0], he[1])
    return np.vstack([he, third / np.linalg.norm(third)]).astype(np.float32)


def macenko_stain_matrix(
    rgb: np.ndarray, beta: float = 0.15, alpha: float = 1.0, min_pixels: int = 500,
    max_pixels: int = 100_000,
) -> np.ndarray:
    """Haematoxylin and eosin OD unit vectors (2, 3) of an RGB image or batch, by Macenko's method (see module).

    Looks at most at ``max_pixels`` pixels (an even stride through the image). Returns :data:`REFERENCE_HE`
    when fewer than ``min_pixels`` tissue pixels are present or the two directions nearly coincide.
    """
    _check_rgb(rgb)
    flat = rgb.reshape(-1, 3)
    flat = flat[::max(1, len(flat) // max_pixels)]
    od = _OD_LUT[flat]
    od = od[(od >= beta).all(axis=1)]
    if len(od) < min_pixels:
        return REFERENCE_HE.copy()
    od = od.astype(np.float64)
    _, eigvecs = np.linalg.eigh(np.cov(od, rowvar=False))
    plane = eigvecs[:, [2, 1]]  # largest two, largest first
    plane[:, 0] *= np.sign(plane[:, 0].sum()) or 1.0  # point into the positive OD octant
    plane[:, 1] *= np.sign(plane[:, 1].sum()) or 1.0
    proj = od @ plane
    angles = np.arctan2(proj[:, 1], proj[:, 0])
    lo, hi = np.percentile(angles, [alpha, 100.0 - alpha])
    v1 = plane @ np.array([np.cos(lo), np.sin(lo)])
    v2 = plane @ np.array([np.cos(hi), np.sin(hi)])
    he = np.vstack([v1, v2]) if v1[0] >= v2[0] else np.vstack([v2, v1])
    he = np.abs(he) / np.linalg.norm(he, axis=1, keepdims=True)
    if abs(float(he[0] @ he[1])) > 0.995:
        return REFERENCE_HE.copy()
    return he.astype(np.float32)


def stain_transform(source_he: np.ndarray, target_he: np.ndarray = REFERENCE_HE) -> np.ndarray:
    """The 3×3 OD-space map ``T`` with ``od_target = od_source @ T`` (rows of the bases are stain vectors)."""
    src = complete_basis(source_he).astype(np.float64)
    dst = complete_basis(target_he).astype(np.float64)
    return (np.linalg.inv(src) @ dst).astype(np.float32)


def apply_stain_transform(rgb: np.ndarray, transform: np.ndarray) -> np.ndarray:
    """Map uint8 RGB (any leading shape, last axis 3) through an OD-space 3×3 transform; returns uint8 RGB."""
    od = optical_density(rgb)
    od_new = np.clip(od @ np.asarray(transform, dtype=np.float32), 0.0, 3.0)
    out = np.exp(od_new * np.float32(-np.log(10.0))) * np.float32(255.0)
    return np.clip(out + np.float32(0.5), 0, 255).astype(np.uint8)


def stain_lut(transform: np.ndarray, bits: int = 6) -> np.ndarray:
    """Look-up table of :func:`apply_stain_transform` over an RGB grid of ``2**bits`` levels per channel.

    Shape ``(2**(3*bits), 3)`` uint8; grid level ``k`` stands for intensity ``k * 2**(8-bits) + 2**(7-bits)``
    (the centre of its bin), so input intensities are off by at most ``2**(7-bits)`` (2 of 255 for 6 bits).
    """
    step = 1 << (8 - bits)
    levels = (np.arange(1 << bits) * step + step // 2).astype(np.uint8)
    r, g, b = np.meshgrid(levels, levels, levels, indexing="ij")
    grid = np.stack([r.ravel(), g.ravel(), b.ravel()], axis=-1)
    return apply_stain_transform(grid[None], transform)[0]


def apply_stain_lut(rgb: np.ndarray, lut: np.ndarray, bits: int = 6) -> np.ndarray:
    """Map uint8 RGB (any leading shape) through a :func:`stain_lut` table; ≈5× faster than the exact map."""
    _check_rgb(rgb)
    shift = 8 - bits
    idx = (rgb[..., 0] >> shift).astype(np.int32) << (2 * bits)
    idx |= (rgb[..., 1] >> shift).astype(np.int32) << bits
    idx |= rgb[..., 2] >> shift
    return np.take(lut, idx, axis=0)


def macenko_normalise(rgb: np.ndarray, target_he: np.ndarray = REFERENCE_HE,
                      source_he: np.ndarray | None = None) -> np.ndarray:
    """Normalise an RGB image or batch to the reference stain basis; ``source_he`` defaults to its own estimate."""
    src = macenko_stain_matrix(rgb) if source_he is None else source_he
    return apply_stain_transform(rgb, stain_transform(src, target_he))


def _check_rgb(rgb: np.ndarray) -> None:
    if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8 or rgb.ndim < 3 or rgb.shape[-1] != 3:
        shape = getattr(rgb, "shape", None)
        dtype = getattr(rgb, "dtype", type(rgb).__name__)
        raise MicrometsError(f"expected uint8 RGB with last axis 3, got dtype {dtype} shape {shape}")
