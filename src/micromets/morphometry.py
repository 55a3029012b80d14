"""Nuclear morphometry of H&E patches: haematoxylin → nuclei → size, shape, chromatin and crowding features.

The second detector family (issue 8): lymphocytes have small, round, dark, evenly stained nuclei packed densely;
carcinoma cells have large, pale, vesicular nuclei with coarse chromatin, and more eosinophilic cytoplasm between
them. This module turns a batch of stain-normalised patches into one feature vector per patch; a small
classifier (an ONNX graph, see :mod:`micromets.model`) turns the features into a tumour probability.

Steps, all vectorised over the batch (scipy.ndimage with an in-plane structuring element, so patches never touch):

1. optical density → stain concentrations in the reference basis (:data:`micromets.normalise.REFERENCE_HE`;
   the input must already be mapped onto it);
2. haematoxylin smoothed with a Gaussian of σ = 0.5 µm, thresholded at :data:`H_THRESHOLD`;
3. holes filled — pale tumour nuclei segment as rims of chromatin around a pale centre, the filled outline is the
   nucleus; the filled-but-unstained share is kept as a feature (*hollowness*, vesicular chromatin);
4. objects smaller than :data:`MIN_NUCLEUS_UM2` are dropped (debris, noise);
5. per-nucleus area, mean and spread of haematoxylin, second-moment eccentricity; per-patch aggregates.

Units: areas in µm², densities per mm² of patch field, OD in optical-density units (log10).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from micromets import normalise

H_THRESHOLD = 0.24          # haematoxylin concentration (reference basis, OD units) of nuclear pixels
MIN_NUCLEUS_UM2 = 12.0      # smaller objects are not nuclei
LARGE_NUCLEUS_UM2 = 60.0    # lymphocyte nuclei are ≈ 20–45 µm²; carcinoma nuclei mostly larger

FEATURES = [
    "tissue_fraction",            # stained-tissue share of the field
    "nuclei_per_mm2",             # crowding
    "nuclear_fraction",           # nuclear area / tissue area
    "nucleus_area_mean_um2",
    "nucleus_area_cv",            # spread of nuclear size (pleomorphism)
    "large_nucleus_fraction",     # share of nuclei > LARGE_NUCLEUS_UM2
    "nucleus_h_mean",             # chromatin density (pale vs dark), area-weighted
    "nucleus_h_std",              # chromatin texture inside nuclei
    "nucleus_hollowness",         # filled but unstained share of nuclear area (vesicular nuclei)
    "nucleus_eccentricity_mean",
    "stroma_eosin_mean",          # eosin of tissue outside nuclei (cytoplasm, stroma)
    "tissue_h_mean",              # haematoxylin over all tissue
]

_STRUCT = np.zeros((3, 3, 3), bool)
_STRUCT[1] = ndimage.generate_binary_structure(2, 1)  # 4-connected within a patch, never across patches


def patch_features(rgb: np.ndarray, mpp: float, basis_he: np.ndarray = normalise.REFERENCE_HE) -> np.ndarray:
    """Features (N, len(FEATURES)) float32 of stain-normalised uint8 patches (N, P, P, 3) at ``mpp`` µm/px."""
    n, p = rgb.shape[0], rgb.shape[1]
    if n == 0:
        return np.zeros((0, len(FEATURES)), np.float32)
    px_um2 = mpp * mpp
    od = normalise.optical_density(rgb)
    conc = od @ np.linalg.inv(normalise.complete_basis(basis_he)).astype(np.float32)
    h = ndimage.gaussian_filter(conc[..., 0], sigma=(0, 0.5 / mpp, 0.5 / mpp))
    eosin = conc[..., 1]
    tissue = (od >= 0.15).all(axis=-1)
    raw = h > H_THRESHOLD
    filled = ndimage.binary_fill_holes(raw, structure=_STRUCT)
    labels, n_obj = ndimage.label(filled, structure=_STRUCT)
    flat = labels.ravel()
    area_px = np.bincount(flat, minlength=n_obj + 1).astype(np.float64)
    keep = area_px * px_um2 >= MIN_NUCLEUS_UM2
    keep[0] = False
    nucleus = keep[labels]

    # per-object sums
    yy, xx = np.mgrid[0:p, 0:p].astype(np.float64)
    yy = np.broadcast_to(yy, labels.shape).ravel()
    xx = np.broadcast_to(xx, labels.shape).ravel()
    hv = h.ravel().astype(np.float64)

    def osum(w):
        return np.bincount(flat, weights=w, minlength=n_obj + 1)

    s_h, s_h2, s_raw = osum(hv), osum(hv * hv), osum(raw.ravel().astype(np.float64))
    s_y, s_x, s_yy, s_xx, s_xy = osum(yy), osum(xx), osum(yy * yy), osum(xx * xx), osum(xx * yy)
    patch_of = np.zeros(n_obj + 1, np.int64)
    patch_of[flat] = np.repeat(np.arange(n), p * p)
    a = np.maximum(area_px, 1.0)
    h_mean_obj = s_h / a
    h_std_obj = np.sqrt(np.maximum(s_h2 / a - h_mean_obj ** 2, 0.0))
    cy, cx = s_y / a, s_x / a
    cov_yy, cov_xx, cov_xy = s_yy / a - cy ** 2, s_xx / a - cx ** 2, s_xy / a - cx * cy
    root = np.sqrt(np.maximum(((cov_yy - cov_xx) / 2) ** 2 + cov_xy ** 2, 0.0))
    lam1, lam2 = (cov_yy + cov_xx) / 2 + root, np.maximum((cov_yy + cov_xx) / 2 - root, 0.0)
    ecc_obj = np.sqrt(np.clip(1.0 - lam2 / np.maximum(lam1, 1e-9), 0.0, 1.0))

    idx = np.flatnonzero(keep)
    owner = patch_of[idx]

    def psum(w):
        return np.bincount(owner, weights=w, minlength=n)

    count = psum(np.ones(len(idx)))
    area_um2 = area_px[idx] * px_um2
    nuc_px = psum(area_px[idx])
    safe_count, safe_px = np.maximum(count, 1.0), np.maximum(nuc_px, 1.0)
    area_mean = psum(area_um2) / safe_count
    area_sq = psum(area_um2 ** 2) / safe_count
    tissue_px = tissue.reshape(n, -1).sum(axis=1).astype(np.float64)
    stroma = tissue & ~nucleus
    stroma_px = stroma.reshape(n, -1).sum(axis=1)
    feats = np.column_stack([
        tissue_px / (p * p),
        count / (p * p * px_um2 * 1e-6),
        nuc_px / np.maximum(tissue_px, 1.0),
        area_mean,
        np.sqrt(np.maximum(area_sq - area_mean ** 2, 0.0)) / np.maximum(area_mean, 1e-9),
        psum((area_um2 > LARGE_NUCLEUS_UM2).astype(np.float64)) / safe_count,
        psum(s_h[idx]) / safe_px,
        psum(h_std_obj[idx] * area_px[idx]) / safe_px,
        1.0 - psum(s_raw[idx]) / safe_px,
        psum(ecc_obj[idx]) / safe_count,
        (eosin * stroma).reshape(n, -1).sum(axis=1) / np.maximum(stroma_px, 1),
        (h * tissue).reshape(n, -1).sum(axis=1) / np.maximum(tissue_px, 1.0),
    ])
    return feats.astype(np.float32)
