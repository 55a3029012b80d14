"""Tissue mask from a low-resolution view of the slide.

Tissue is where the glass absorbs light and the colour is saturated: optical density above that of bare glass
and a saturation threshold found by Otsu's method (bounded, so that a slide that is all tissue or all glass is
still judged in absolute terms). Excluded:

- black scanner padding and out-of-focus dark frames (very dark, unsaturated pixels);
- pen marks: ink is saturated green or deep blue, hues that neither haematoxylin-eosin nor haematoxylin-DAB
  produce at low magnification;
- specks smaller than ``min_object_um2`` and holes smaller than ``max_hole_um2`` are removed/filled.

The mask's pixel ``(r, c)`` covers level-0 ``[c*k, (c+1)*k) × [r*k, (r+1)*k)`` with ``k = mask_mpp / l0_mpp``
(an integer, see :meth:`micromets.slide.Slide.thumbnail`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi
from skimage import filters, morphology

from micromets.errors import MicrometsError
from micromets.slide import Slide

#: Default resolution of the mask (µm/px): a lymph node of 5 mm is ~600 px across.
MASK_MPP = 8.0
#: Optical density (max over RGB channels) above which a pixel is not bare glass.
GLASS_OD = 0.08
#: Bounds on the Otsu saturation threshold.
SATURATION_BOUNDS = (0.06, 0.20)
#: Pixels darker than this (max channel, 0-255) and unsaturated are scanner padding or dirt.
BLACK_MAX = 45
#: A slide is grayscale when every pixel darker than glass differs by at most this much between channels (0-255;
#: a gray image stored as RGB JPEG decodes to R = G = B within 1-2; H&E or DAB tissue differs by tens).
GRAY_SPREAD_MAX = 2


@dataclass
class TissueMask:
    """Boolean tissue mask with its resolution and the low-resolution RGB view it was computed from."""

    mask: np.ndarray  # bool (rows, cols)
    mask_mpp: float   # µm per mask pixel
    l0_mpp: float     # µm per level-0 pixel of the slide it came from
    rgb: np.ndarray   # uint8 (rows, cols, 3): the slide at mask_mpp

    @property
    def area_mm2(self) -> float:
        return float(self.mask.sum()) * (self.mask_mpp / 1000) ** 2

    @property
    def l0_per_px(self) -> int:
        """Level-0 pixels per mask pixel (an integer)."""
        return round(self.mask_mpp / self.l0_mpp)


def pen_mask(rgb: np.ndarray) -> np.ndarray:
    """Pixels that look like marker ink (green, deep blue or black strokes)."""
    r, g, b = (rgb[..., i].astype(np.int16) for i in range(3))
    green = (g - r > 20) & (g - b > 0)
    blue = (b - r > 80) & (r < 120)
    return green | blue


def tissue_from_rgb(rgb: np.ndarray, px_um: float,
                    min_object_um2: float = 2_000.0, max_hole_um2: float = 5_000.0,
                    band_rows: int = 256) -> np.ndarray:
    """Tissue mask of an RGB image whose pixels are ``px_um`` µm wide.

    The per-pixel tests run over bands of ``band_rows`` rows, so their float temporaries stay small: what is
    kept whole is one float32 saturation image and two boolean masks (about 6 bytes per pixel beside the RGB).
    """
    shape = rgb.shape[:2]
    saturation = np.empty(shape, np.float32)
    candidate = np.empty(shape, bool)   # not bare glass
    allowed = np.empty(shape, bool)     # neither scanner padding nor pen ink
    for r0 in range(0, shape[0], band_rows):
        band = rgb[r0:r0 + band_rows]
        # channel max / min as two elementwise ops (a reduction over a length-3 axis is ~30× slower)
        vmax = np.maximum(np.maximum(band[..., 0], band[..., 1]), band[..., 2]).astype(np.float32)
        vmin = np.minimum(np.minimum(band[..., 0], band[..., 1]), band[..., 2]).astype(np.float32)
        sat = np.where(vmax > 0, (vmax - vmin) / np.maximum(vmax, 1), 0)
        saturation[r0:r0 + band_rows] = sat
        candidate[r0:r0 + band_rows] = -np.log10(np.maximum(vmin, 1) / 255) > GLASS_OD
        allowed[r0:r0 + band_rows] = ~((vmax < BLACK_MAX) & (sat < 0.3)) & ~pen_mask(band)
    if candidate.sum() > 16:
        thr = float(filters.threshold_otsu(saturation[candidate]))
    else:
        thr = SATURATION_BOUNDS[1]
    thr = float(np.clip(thr, *SATURATION_BOUNDS))
    tissue = candidate & (saturation > thr) & allowed
    del saturation, candidate, allowed
    px_um2 = px_um * px_um
    tissue = morphology.remove_small_holes(tissue, max_size=round(max_hole_um2 / px_um2))
    tissue = ndi.binary_opening(tissue, iterations=1) if px_um < 16 else tissue
    return morphology.remove_small_objects(tissue, max_size=round(min_object_um2 / px_um2))


def is_grayscale(rgb: np.ndarray, band_rows: int = 256) -> bool:
    """True when the image shows something darker than bare glass (padding aside) and all of it is neutral gray
    (R = G = B within :data:`GRAY_SPREAD_MAX`): a one-channel slide, which holds no stain colour to find tissue by.
    A blank slide is not grayscale (nothing to see)."""
    glass_max = 255 * 10 ** -GLASS_OD
    seen = False
    for r0 in range(0, rgb.shape[0], band_rows):
        band = rgb[r0:r0 + band_rows]
        vmax = np.maximum(np.maximum(band[..., 0], band[..., 1]), band[..., 2])
        vmin = np.minimum(np.minimum(band[..., 0], band[..., 1]), band[..., 2])
        content = (vmin < glass_max) & (vmax >= BLACK_MAX)
        if np.any((vmax - vmin)[content] > GRAY_SPREAD_MAX):
            return False
        seen = seen or bool(content.any())
    return seen


def tissue_mask(slide: Slide, mask_mpp: float = MASK_MPP) -> TissueMask:
    """Tissue mask of a slide at about ``mask_mpp`` µm/px (read in windows from a low-resolution level).

    A grayscale slide is refused (:func:`is_grayscale`): tissue is found by its stain colour, so it would
    otherwise read as "no tissue found"."""
    thumb, thumb_mpp = slide.thumbnail(mask_mpp)
    if is_grayscale(thumb):
        raise MicrometsError(f"{slide.path}: grayscale slide (R = G = B everywhere), not an H&E or IHC colour image")
    return TissueMask(tissue_from_rgb(thumb, thumb_mpp), thumb_mpp, slide.l0_mpp, thumb)
