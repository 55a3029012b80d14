"""Laplacian-of-Gaussian nuclear features of H&E patches (an experiment of issue 8; not part of the package).

Nuclei are found by their contrast rather than an absolute threshold: the haematoxylin amount (reference basis of
micromets.normalise) is filtered with the scale-normalised negative Laplacian of Gaussian at σ 2, 3 and 4.5 µm;
local maxima (5 µm window) above 0.02 are nuclei. Features per patch: nuclei per mm², mean smoothed haematoxylin
of the nuclei (paleness), mean σ and share at 4.5 µm (size), haematoxylin outside nuclei, eosin of tissue, tissue
fraction, mean peak contrast, haematoxylin of tissue. Units: µm, mm², OD.
"""
import numpy as np
from scipy import ndimage
from micromets import normalise

SIGMAS_UM = (2.0, 3.0, 4.5)
NAMES = ['blob_per_mm2', 'blob_h_mean', 'blob_sigma_mean', 'large_blob_frac', 'bg_h_mean', 'tissue_eosin_mean',
         'tissue_fraction', 'blob_contrast_mean', 'tissue_h_mean']

def blob_features(rgb, mpp, t=0.02, basis_he=normalise.REFERENCE_HE):
    n, p = rgb.shape[:2]
    od = normalise.optical_density(rgb)
    conc = od @ np.linalg.inv(normalise.complete_basis(basis_he)).astype(np.float32)
    h = np.maximum(conc[..., 0], 0); e = np.maximum(conc[..., 1], 0)
    tissue = (od >= 0.15).all(-1)
    resp = []
    for s_um in SIGMAS_UM:
        s = s_um / mpp
        lap = (ndimage.gaussian_filter(h, sigma=(0, s, s), order=(0, 2, 0), mode='reflect')
               + ndimage.gaussian_filter(h, sigma=(0, s, s), order=(0, 0, 2), mode='reflect'))
        resp.append(-s * s * lap)
    resp = np.stack(resp)  # (S, N, P, P)
    best = resp.max(0); scale = resp.argmax(0)
    win = int(round(2.5 / mpp)) * 2 + 1
    peak = (best == ndimage.maximum_filter(best, size=(1, win, win), mode='constant')) & (best > t)
    hs = ndimage.gaussian_filter(h, sigma=(0, 1.5 / mpp, 1.5 / mpp))
    bg = ndimage.gaussian_filter(h, sigma=(0, 8 / mpp, 8 / mpp))
    cnt = peak.reshape(n, -1).sum(1)
    safe = np.maximum(cnt, 1)
    def pm(v): return (v * peak).reshape(n, -1).sum(1) / safe
    sig = np.asarray(SIGMAS_UM)[scale]
    nonnuc = tissue & (best < t)
    tpx = np.maximum(tissue.reshape(n, -1).sum(1), 1)
    area_mm2 = p * p * mpp * mpp * 1e-6
    return np.column_stack([
        cnt / area_mm2, pm(hs), pm(sig), pm((sig >= 4.5).astype(float)),
        (h * nonnuc).reshape(n, -1).sum(1) / np.maximum(nonnuc.reshape(n, -1).sum(1), 1),
        (e * tissue).reshape(n, -1).sum(1) / tpx,
        tissue.reshape(n, -1).mean(1), pm(best), (h * tissue).reshape(n, -1).sum(1) / tpx,
    ]).astype(np.float32)
