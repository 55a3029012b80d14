"""Training-data loaders. Every dataset declares its µm/px and is resampled on load to the model's µm/px.

Each loader returns a list of :class:`Sample`: one uint8 RGB image at the model's resolution, a label
(0 = normal, 1 = tumour), the *group* it must be split by (slide or patient — never split by patch) and the source
name recorded in the model card. Formats:

- folder per class: ``ROOT/<class>/*.{png,jpg,jpeg,tif,tiff}`` (:func:`load_folder_per_class`); class folder names
  are mapped with ``classes`` (default: names containing tumor/tumour → 1, normal → 0; others skipped). The group
  is the file-name prefix matched by ``group_pattern`` (default: ``tumor_001`` in ``tumor_001_69916_134313.png``,
  else the file stem);
- breast IDC: ``ROOT/<patient>/<0|1>/*.png`` (:func:`load_idc`), group = patient;
- PCam HDF5 under the official names ``camelyonpatch_level_2_split_{train,valid,test}_{x,y}.h5`` with datasets
  ``x`` (N, 96, 96, 3) uint8 and ``y`` (N, 1, 1, 1) (:func:`load_pcam`); PCam patches are level 2 of CAMELYON16,
  0.972 µm/px; group = the split (PCam's own split is by slide);
- CAMELYON-style WSI + ASAP XML (:func:`load_wsi_xml`): tumour patches centred inside the outlines, normal patches
  centred on tissue outside them, read through OpenSlide at the model's µm/px.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from micromets.errors import MicrometsError
from micromets.tiles import resample

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
PCAM_MPP = 0.972  # CAMELYON16 level 2: 0.243 µm/px × 4


@dataclass
class Sample:
    """One training image at the model's resolution."""

    rgb: np.ndarray  # (H, W, 3) uint8
    label: int       # 0 normal, 1 tumour
    group: str       # split unit: slide or patient id
    source: str      # dataset name for the card
    name: str        # file (and position) it came from


#: Largest image (pixels) read as one tile: 6000 × 6000 px (1.5 mm at 0.25 µm/px) decodes to about 0.5 GB at its
#: peak; a 12000² PNG used to peak at 2 GB and a 20000² one crashed. A larger image is a slide, not a tile.
MAX_IMAGE_PX = 6000 * 6000


def read_rgb(path: Path) -> np.ndarray:
    """uint8 RGB of an image file; transparency is composited on white. Raises MicrometsError naming the file,
    also for an image of more than :data:`MAX_IMAGE_PX` pixels (checked from its header, before decoding)."""
    try:
        with Image.open(path) as im:
            if im.width * im.height > MAX_IMAGE_PX:
                raise MicrometsError(f"{path}: image of {im.width}×{im.height} px is larger than the "
                                     f"{MAX_IMAGE_PX / 1e6:g} megapixels a tile may have; cut it into tiles or "
                                     "analyse it as a slide")
            if im.mode in ("RGBA", "LA", "P"):
                im = im.convert("RGBA")
                white = Image.new("RGBA", im.size, (255, 255, 255, 255))
                im = Image.alpha_composite(white, im)
            return np.asarray(im.convert("RGB"))
    except Image.DecompressionBombError as err:  # Pillow's own guard, at twice its MAX_IMAGE_PIXELS
        raise MicrometsError(f"{path}: image larger than the {MAX_IMAGE_PX / 1e6:g} megapixels a tile may have "
                             f"({err})") from None
    except (OSError, ValueError) as err:
        raise MicrometsError(f"{path}: cannot read image ({err})") from None


def cut(sample: Sample, size_px: int) -> list[Sample]:
    """Split an image larger than ``size_px`` into non-overlapping ``size_px`` squares (the remainder is dropped)."""
    h, w = sample.rgb.shape[:2]
    if h < 2 * size_px and w < 2 * size_px:
        return [sample]
    return [
        Sample(sample.rgb[y:y + size_px, x:x + size_px].copy(), sample.label, sample.group, sample.source,
               f"{sample.name}@{x},{y}")
        for y in range(0, h - size_px + 1, size_px) for x in range(0, w - size_px + 1, size_px)
    ]


def default_class_label(folder_name: str) -> int | None:
    """1 for tumour folders (tumor/tumour/TUM), 0 for normal, None for anything else."""
    low = folder_name.lower()
    if "tumor" in low or "tumour" in low or low in ("tum", "1"):
        return 1
    if "normal" in low or low == "0":
        return 0
    return None


def load_folder_per_class(
    root: str | Path, mpp: float, target_mpp: float, source: str, classes: dict[str, int] | None = None,
    group_pattern: str = r"^([A-Za-z]+_\d+)_",
) -> list[Sample]:
    """Images in ``ROOT/<class>/`` (see module docstring), resampled from ``mpp`` to ``target_mpp``."""
    root = Path(root)
    if not root.is_dir():
        raise MicrometsError(f"{root}: dataset folder not found")
    samples = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        label = classes.get(folder.name) if classes is not None else default_class_label(folder.name)
        if label is None:
            continue
        for path in sorted(folder.iterdir()):
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            match = re.match(group_pattern, path.name)
            group = match.group(1) if match else path.stem
            samples.append(Sample(resample(read_rgb(path), mpp, target_mpp), int(label), group, source, str(path)))
    if not samples:
        raise MicrometsError(f"{root}: no images in any recognised class folder")
    return samples


def load_prefixed_tiles(root: str | Path, mpp: float, target_mpp: float, source: str,
                        classes: dict[str, int]) -> list[Sample]:
    """Images in ``ROOT`` whose class is the file-name prefix before ``-`` (NCT-CRC-HE layout); group = file stem."""
    root = Path(root)
    samples = [
        Sample(resample(read_rgb(p), mpp, target_mpp), classes[p.name.split("-")[0]], p.stem, source, str(p))
        for p in sorted(root.iterdir())
        if p.suffix.lower() in IMAGE_SUFFIXES and p.name.split("-")[0] in classes
    ]
    if not samples:
        raise MicrometsError(f"{root}: no images with a class prefix among {sorted(classes)}")
    return samples


def load_idc(root: str | Path, target_mpp: float, mpp: float = 4.0, source: str = "idc_breast",
             patients: list[str] | None = None) -> list[Sample]:
    """Breast IDC layout ``ROOT/<patient>/<0|1>/*.png`` (≈4 µm/px); group = patient."""
    root = Path(root)
    if not root.is_dir():
        raise MicrometsError(f"{root}: IDC folder not found")
    samples = []
    for patient in sorted(p for p in root.iterdir() if p.is_dir()):
        if patients is not None and patient.name not in patients:
            continue
        for label in (0, 1):
            for path in sorted((patient / str(label)).glob("*.png")):
                samples.append(Sample(resample(read_rgb(path), mpp, target_mpp), label, patient.name, source,
                                      str(path)))
    if not samples:
        raise MicrometsError(f"{root}: no <patient>/<0|1>/*.png images")
    return samples


def pcam_paths(folder: str | Path, split: str) -> tuple[Path, Path]:
    """The official PCam file names of ``split`` (train, valid or test) in ``folder``."""
    if split not in ("train", "valid", "test"):
        raise MicrometsError(f"PCam split must be train, valid or test, not {split!r}")
    folder = Path(folder)
    return (folder / f"camelyonpatch_level_2_split_{split}_x.h5",
            folder / f"camelyonpatch_level_2_split_{split}_y.h5")


def load_pcam(folder: str | Path, split: str, target_mpp: float, limit: int | None = None,
              source: str = "pcam") -> list[Sample]:
    """PCam HDF5 (``x``: (N, 96, 96, 3) uint8, ``y``: (N, 1, 1, 1)), first ``limit`` patches; group = split."""
    import h5py

    x_path, y_path = pcam_paths(folder, split)
    for path in (x_path, y_path):
        if not path.is_file():
            raise MicrometsError(f"{path}: PCam file not found")
    try:
        with h5py.File(x_path, "r") as fx, h5py.File(y_path, "r") as fy:
            n = len(fx["x"]) if limit is None else min(limit, len(fx["x"]))
            x = fx["x"][:n]
            y = np.asarray(fy["y"][:n]).reshape(-1)
    except (OSError, KeyError) as err:
        raise MicrometsError(f"{x_path}: not a PCam HDF5 pair ({err})") from None
    if x.ndim != 4 or x.shape[-1] != 3 or x.dtype != np.uint8 or len(y) != len(x):
        raise MicrometsError(f"{x_path}: expected x (N, H, W, 3) uint8 and y (N, 1, 1, 1), got {x.shape} {y.shape}")
    return [Sample(resample(x[i], PCAM_MPP, target_mpp), int(y[i]), f"pcam_{split}", source, f"{x_path}#{i}")
            for i in range(n)]


def load_wsi_xml(slide_path: str | Path, xml_path: str | Path, target_mpp: float, patch_px: int,
                 n_per_class: int, seed: int = 0, min_tissue: float = 0.5, margin: float = 1.25,
                 source: str = "wsi") -> list[Sample]:
    """Patches of a whole-slide image with ASAP XML tumour outlines (level-0 px), read at ``target_mpp``.

    Tumour: up to ``n_per_class`` patches whose centre lies inside a tumour outline (exclusion regions cut out);
    normal: up to ``n_per_class`` patches whose whole field lies outside every outline and that are tissue
    (stained fraction >= ``min_tissue``). Each patch covers ``margin × patch_px`` pixels at ``target_mpp`` so
    training can crop it. Group = slide id. Candidate centres are drawn uniformly (seeded), at most 20 per patch.
    """
    import shapely

    from micromets.annotations import read_asap_xml
    from micromets.normalise import tissue_fraction
    from micromets.slide import open_slide

    rng = np.random.default_rng(seed)
    tumour = shapely.union_all(read_asap_xml(xml_path).geometries_l0())
    samples = []
    with open_slide(slide_path) as slide:
        side_l0 = int(np.ceil(margin * patch_px * target_mpp / slide.l0_mpp))
        half = side_l0 / 2
        n_found = {1: 0, 0: 0}
        for label in (1, 0):
            if label == 1 and tumour.is_empty:
                continue
            box = tumour.bounds if label == 1 else (half, half, slide.l0_width - half, slide.l0_height - half)
            xy = np.column_stack([rng.uniform(box[0], box[2], 20 * n_per_class),
                                  rng.uniform(box[1], box[3], 20 * n_per_class)])
            if label == 1:
                ok = shapely.contains_xy(tumour, xy[:, 0], xy[:, 1])
            else:
                squares = shapely.box(xy[:, 0] - half, xy[:, 1] - half, xy[:, 0] + half, xy[:, 1] + half)
                ok = ~shapely.intersects(tumour, squares)
            for x, y in xy[ok]:
                if n_found[label] >= n_per_class:
                    break
                l0_x = int(np.clip(x - half, 0, max(0, slide.l0_width - side_l0)))
                l0_y = int(np.clip(y - half, 0, max(0, slide.l0_height - side_l0)))
                rgb = slide.read_at_mpp(l0_x, l0_y, side_l0, side_l0, target_mpp)
                if tissue_fraction(rgb[None])[0] < min_tissue:
                    continue
                n_found[label] += 1
                samples.append(Sample(rgb, label, slide.slide_id, source, f"{slide_path}@{l0_x},{l0_y}"))
    if not samples:
        raise MicrometsError(f"{slide_path}: no tissue patches found inside or outside the outlines of {xml_path}")
    return samples
