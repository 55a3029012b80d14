"""Tissue-class training data: every real source under ../shared/data, labelled with what its windows show.

The detector is trained as a tissue classifier (issue 14): a lymph node's normal tissue is not one class. Each
kind is learned as itself and the tumour probability is the carcinoma class's softmax output (:data:`CLASSES`).

Labels (:data:`CLASSES` index, or :data:`ANY_NORMAL` for "one of the normal classes, which one unknown"):

- carcinoma: CAMELYON16 tumour patches (lymph-node metastases), BACH invasive and in situ carcinoma (windows inside
  the challenge's masks), MoNuSeg TCGA-BRCA and BreCaHAD tiles (tile-level labels), colorectal TUM/TUMOR (another
  carcinoma, adenocarcinoma);
- lymphoid: colorectal LYM/LYMPHO; stroma: colorectal STR/STROMA; fat: ADI/ADIPOSE; muscle/vessel: MUS; debris,
  blood and necrosis: DEB/DEBRIS; background/glass: BACK/EMPTY;
- any normal class (partial label, loss = -log of the summed normal probabilities): CAMELYON16 normal patches,
  CAMELYON17 negative-node tiles, PCam hard negatives, BACH unannotated tiles and the unannotated parts of
  partly annotated BACH tiles.

Weak labels: a carcinoma tile also holds desmoplastic stroma, vessels and lymphocytes. A tile label is therefore
never given to a random crop: a window of a carcinoma tile is labelled carcinoma only when it shows what a
carcinoma window shows, many large nuclei (:func:`nuclear_features`, nuclei = haematoxylin above the image's Otsu
threshold: nuclear area fraction >= 0.15 and large-nucleus (>= 30 µm²) area fraction >= 0.10 of the window; BACH
windows >= 60 % inside the carcinoma mask need 0.12 and 0.05);
the other windows of such a tile are not used (neither class). The same rule removes nucleus-dense windows from the
BACH unannotated tiles, which hold normal ducts: benign breast epithelium is not normal lymph-node tissue, and
calling it normal would teach the model that cohesive epithelium is normal (docs/model.md, "benign epithelium").
BreakHis (benign and malignant breast tumours) is never trained on; it is reported as an unseen source.
Multiple-instance bags of these tiles (:func:`tile_bags`, beside or instead of the selection) were measured held out
against it and lost (docs/model.md, "Multiple-instance bags").

Kather 2016's STROMA and ADIPOSE tiles (:data:`BENCH_RESERVED`) are kept for the bench phantoms' capsule,
trabeculae and fat, never trained on. Colorectal MUC, NORM, COMPLEX and MUCOSA (mucus, normal colon mucosa, complex stroma) are left out: none is lymph
node, and normal mucosa is benign epithelium. ``idc_breast`` (≈4 µm/px) is too coarse for the fine model.

Every source states its µm/px and is resampled to the model's; each image is stain-normalised with one Macenko
estimate per group (slide, tile or patient), as :func:`micromets.train.fit.normalise_by_group` does. Groups never
straddle the held-out split (:data:`FOLDS`).
"""

from __future__ import annotations

import csv
import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage

from micromets import normalise
from micromets.tiles import resample
from micromets.train.data import Sample, read_rgb
from micromets.train.fit import normalise_by_group

CLASSES = ["lymphoid", "stroma", "fat", "muscle_vessel", "debris_blood", "background", "carcinoma"]
CARCINOMA = CLASSES.index("carcinoma")
#: partial label: one of the normal classes (every class but carcinoma)
ANY_NORMAL = -1

CRC_CLASS = {"ADI": "fat", "07_ADIPOSE": "fat", "BACK": "background", "08_EMPTY": "background",
             "DEB": "debris_blood", "05_DEBRIS": "debris_blood", "LYM": "lymphoid", "04_LYMPHO": "lymphoid",
             "MUS": "muscle_vessel", "STR": "stroma", "02_STROMA": "stroma", "TUM": "carcinoma",
             "01_TUMOR": "carcinoma"}
#: colorectal tile sets: folder → µm/px (README of each)
CRC_SETS = {"kather2016": 0.495, "kather2016_extra": 0.495, "kather2016_resized224": 0.331,
            "crc_val_he_7k": 0.5, "crc_val_he_7k_jpeg": 0.5, "nct_crc_he_100k": 0.5}
C16_MPP, C17_MPP, PCAM_MPP, BACH_MPP, MONUSEG_MPP, BRECAHAD_MPP = 0.243, 0.24, 0.972, 0.467, 0.25, 0.3
#: never trained on: the bundled phantom capsule / fat tiles (src/micromets/data/tiles/stroma, …/fat), so that
#: ``micromets bench`` draws its stroma and fat from tissue a model of this recipe has not seen (card `held_back`)
BENCH_RESERVED = ("kather2016/02_STROMA", "kather2016/07_ADIPOSE")
C17_NEGATIVE_TRAIN = ["centre_0_patient_006_node_1.jpeg", "centre_2_patient_056_node_1.jpeg"]

#: held-out folds: each fold's model never sees these groups (whole slides, patients, tile sets or parts).
FOLDS = {
    "fold1": {"c16:tumor_001", "monuseg:TCGA-A7-A13E", "monuseg:TCGA-A7-A13F", "monuseg:TCGA-AO-A0J2",
              "bach:A03", "crc:kather2016", "pcam:0"},
    "fold2": {"c16:tumor_004", "monuseg:TCGA-AR-A1AK", "monuseg:TCGA-AR-A1AS", "monuseg:TCGA-E2-A1B5",
              "brecahad:all", "crc:crc_val_he_7k", "crc:crc_val_he_7k_jpeg", "pcam:1", "c17:centre_0"},
    "fold3": {"c16:tumor_064", "crc:kather2016_resized224", "crc:kather2016_extra", "crc:nct_crc_he_100k",
              "pcam:2", "c17:centre_2"},
}

#: nuclear selection of carcinoma windows (see module docstring)
#: (nuclear area fraction, large-nucleus area fraction) a window of a tile-labelled carcinoma image must reach
DENSE_UNMASKED = (0.15, 0.10)
#: the same inside a BACH carcinoma mask (the mask already says carcinoma; the cut drops its stroma), and the
#: density above which a window of unannotated BACH tissue is left out (ducts, lymphocyte clusters)
DENSE_MASKED = (0.12, 0.05)
LARGE_NUCLEUS_UM2 = 30.0
HAEMATOXYLIN_MIN = 0.1   # floor of the per-image Otsu threshold on haematoxylin concentration (OD units)
MASK_FRACTION_MIN = 0.6
#: the detector's tissue filter (model card): a window with fewer stained pixels is never shown to the network
TISSUE_MIN = 0.05
#: sources whose carcinoma label belongs to a whole tile, not to each of its windows (weak labels)
WEAK_CARCINOMA = ("bach_carcinoma", "monuseg_carcinoma", "brecahad_carcinoma")


@dataclass
class Window:
    """A training window: ``size`` px square at (y, x) of image ``image`` (index into the image list)."""

    image: int
    y: int
    x: int
    label: int        # CLASSES index or ANY_NORMAL


@dataclass
class TissueSet:
    """Stain-normalised images at the model's µm/px and the labelled windows cut from them."""

    images: list[Sample]
    windows: list[Window]
    size: int                         # window side in px (1.25 × patch: room for crop augmentation)
    mpp: float = 0.5                  # µm/px of every image
    meta: dict = field(default_factory=dict)

    def groups(self) -> np.ndarray:
        return np.array([self.images[w.image].group for w in self.windows])

    def sources(self) -> np.ndarray:
        return np.array([self.images[w.image].source for w in self.windows])

    def labels(self) -> np.ndarray:
        return np.array([w.label for w in self.windows])


def haematoxylin(rgb: np.ndarray) -> np.ndarray:
    """Haematoxylin concentration (OD units) of a reference-normalised uint8 RGB image."""
    od = normalise.optical_density(rgb).reshape(-1, 3)
    inv = np.linalg.inv(normalise.complete_basis(normalise.REFERENCE_HE).astype(np.float32))
    return (od @ inv[:, 0]).reshape(rgb.shape[:2])


def nuclear_features(rgb: np.ndarray, mpp: float, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel maps of the nuclear area fraction and the large-nucleus area fraction in a ``size`` window
    centred there (reference-normalised image at ``mpp``)."""
    h = ndimage.gaussian_filter(haematoxylin(rgb), 1.0)
    stained = _stained(rgb) > 0
    level = HAEMATOXYLIN_MIN
    if stained.sum() > 100:
        from skimage.filters import threshold_otsu

        level = max(HAEMATOXYLIN_MIN, float(threshold_otsu(h[stained])))
    nuclei = h >= level
    nuclei = ndimage.binary_opening(nuclei, iterations=1)
    lab, n = ndimage.label(nuclei)
    areas_um2 = np.bincount(lab.ravel(), minlength=n + 1) * mpp * mpp
    large = (areas_um2 >= LARGE_NUCLEUS_UM2)[lab] & nuclei
    frac = ndimage.uniform_filter(nuclei.astype(np.float32), size, mode="reflect")
    frac_large = ndimage.uniform_filter(large.astype(np.float32), size, mode="reflect")
    return frac, frac_large


def _stained(rgb: np.ndarray) -> np.ndarray:
    """float32 map: 1 where every channel's OD >= 0.15 (the tissue filter's stained pixel)."""
    return (rgb.max(axis=-1) <= int(np.floor(255.0 * 10.0 ** -0.15))).astype(np.float32)


def _grid(h: int, w: int, size: int, stride: int):
    for y in range(0, max(1, h - size + 1), stride):
        for x in range(0, max(1, w - size + 1), stride):
            yield y, x


def _crc_images(root: Path, target_mpp: float) -> list[Sample]:
    out = []
    for set_name, mpp in CRC_SETS.items():
        folder = root / "crc_tiles" / set_name
        if not folder.is_dir():
            continue
        for path in sorted(folder.rglob("*")):
            if path.suffix.lower() not in (".png", ".jpg", ".jpeg", ".tif", ".tiff"):
                continue
            key = path.parent.name if path.parent != folder else path.name.split("-")[0]
            cls = CRC_CLASS.get(key)
            if cls is None or f"{set_name}/{key}" in BENCH_RESERVED:
                continue
            out.append(Sample(resample(read_rgb(path), mpp, target_mpp), CLASSES.index(cls), f"crc:{set_name}",
                              f"crc_{cls}", str(path)))
    return out


def load_images(root: str | Path, target_mpp: float = 0.5) -> list[Sample]:
    """Every training image of the tissue recipe at ``target_mpp``; ``label`` is the image-level label
    (CLASSES index or ANY_NORMAL), refined per window by :func:`label_windows`. BreakHis is not loaded."""
    root = Path(root)
    images = []
    for cls_dir, label in (("tumor", CARCINOMA), ("normal", ANY_NORMAL)):
        for path in sorted((root / "camelyon16_patches" / cls_dir).glob("*.png")):
            slide = re.match(r"^(tumor_\d+)", path.name).group(1)
            images.append(Sample(resample(read_rgb(path), C16_MPP, target_mpp), label, f"c16:{slide}",
                                 "c16_tumour" if label == CARCINOMA else "c16_normal", str(path)))
    for name in C17_NEGATIVE_TRAIN:
        path = root / "camelyon17_tiles" / name
        images.append(Sample(resample(read_rgb(path), C17_MPP, target_mpp), ANY_NORMAL,
                             "c17:" + "_".join(name.split("_")[:2]), "c17_negative", str(path)))
    for path in sorted((root / "pcam_hard_negatives" / "normal").iterdir()):
        part = int(hashlib.sha1(path.name.encode()).hexdigest(), 16) % 3
        images.append(Sample(resample(read_rgb(path), PCAM_MPP, target_mpp), ANY_NORMAL, f"pcam:{part}",
                             "pcam_hard_negative", str(path)))
    bach = root / "breast_he" / "bach_wsi_A03"
    with open(bach / "labels.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            label = {"invasive_carcinoma": CARCINOMA, "in_situ_carcinoma": CARCINOMA,
                     "partial_annotation": CARCINOMA, "unannotated": ANY_NORMAL}[row["label"]]
            images.append(Sample(resample(read_rgb(bach / row["file"]), BACH_MPP, target_mpp), label, "bach:A03",
                                 "bach_carcinoma" if label == CARCINOMA else "bach_normal", str(bach / row["file"])))
    monuseg = root / "breast_he" / "monuseg"
    with open(monuseg / "labels.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            images.append(Sample(resample(read_rgb(monuseg / row["file"]), MONUSEG_MPP, target_mpp), CARCINOMA,
                                 f"monuseg:{row['patient']}", "monuseg_carcinoma", str(monuseg / row["file"])))
    for path in sorted((root / "breast_he" / "brecahad" / "images").glob("*.jpg")):
        images.append(Sample(resample(read_rgb(path), BRECAHAD_MPP, target_mpp), CARCINOMA, "brecahad:all",
                             "brecahad_carcinoma", str(path)))
    images += _crc_images(root, target_mpp)
    return images


def carcinoma_mask(sample: Sample) -> np.ndarray | None:
    """BACH: invasive or in situ carcinoma (red or blue) of the challenge mask (``masks/A03_0_anno_K.png`` beside
    ``images/A03_0_image_K.jpg``) at the image's size; None for other sources."""
    if not sample.source.startswith("bach_"):
        return None
    path = Path(sample.name)
    m = read_rgb(path.parent.parent / "masks" / path.name.replace("_image_", "_anno_").replace(".jpg", ".png"))
    tumour = ((m[..., 0] > 128) & (m[..., 1] < 100)) | ((m[..., 2] > 128) & (m[..., 1] < 100))
    zoom = (sample.rgb.shape[0] / tumour.shape[0], sample.rgb.shape[1] / tumour.shape[1])
    return ndimage.zoom(tumour.astype(np.float32), zoom, order=0) > 0.5


def _grid_windows(rgb: np.ndarray, size: int, stride: int):
    """Every window of the grid over ``rgb``: its origin (y, x px), its centre pixel (cy, cx) and whether it passes
    the tissue filter (at least :data:`TISSUE_MIN` of the ``size`` window around the centre stained)."""
    h, w = rgb.shape[:2]
    tissue = ndimage.uniform_filter(_stained(rgb), size, mode="constant")
    for y, x in _grid(h, w, size, stride):
        cy, cx = min(h - 1, y + size // 2), min(w - 1, x + size // 2)
        yield y, x, cy, cx, tissue[cy, cx] >= TISSUE_MIN


def label_windows(images: list[Sample], size: int, mpp: float, stride: int | None = None) -> list[Window]:
    """The labelled windows of every image (see the module docstring for the rules)."""
    stride = stride or size // 2
    windows = []
    for i, s in enumerate(images):
        h, w = s.rgb.shape[:2]
        if max(h, w) <= 1.3 * size or s.source == "pcam_hard_negative":  # a patch (PCam: its labelled centre)
            windows.append(Window(i, max(0, (h - size) // 2), max(0, (w - size) // 2), s.label))
            continue
        weak = s.source in WEAK_CARCINOMA + ("bach_normal",)
        if weak:
            frac, frac_large = nuclear_features(s.rgb, mpp, size)
        mask = carcinoma_mask(s)
        for y, x, cy, cx, over_tissue in _grid_windows(s.rgb, size, stride):
            label = s.label
            if not over_tissue and label != CLASSES.index("background"):
                continue
            if weak:
                need = DENSE_MASKED if mask is not None else DENSE_UNMASKED
                dense = frac[cy, cx] >= need[0] and frac_large[cy, cx] >= need[1]
                if mask is not None:
                    inside = mask[y:y + size, x:x + size].mean()
                    if inside >= MASK_FRACTION_MIN and dense:
                        label = CARCINOMA
                    elif inside == 0 and not dense:
                        label = ANY_NORMAL      # unannotated tissue of BACH (normal breast as far as annotated)
                    else:
                        continue
                elif not dense:
                    continue
            windows.append(Window(i, y, x, label))
    return windows


def tile_bags(ts: TissueSet, images: set[int]) -> list[tuple[int, np.ndarray]]:
    """Multiple-instance bags (issue 14): every tile of a :data:`WEAK_CARCINOMA` source among ``images`` (indices;
    the training passes those with a window it keeps, so a tile where no window passes the nuclear rule is not
    a bag), with the origins (N, 2 as y, x px) of all its windows that pass the tissue filter (stride half a
    window), whatever they show. The tile label says that at least one of them is carcinoma, not which."""
    bags = []
    for i in sorted(images):
        s = ts.images[i]
        if s.source not in WEAK_CARCINOMA:
            continue
        origins = [(y, x) for y, x, _, _, over_tissue in _grid_windows(s.rgb, ts.size, ts.size // 2) if over_tissue]
        if origins:
            bags.append((i, np.array(origins)))
    return bags


def build(root: str | Path, patch_px: int = 96, target_mpp: float = 0.5) -> TissueSet:
    """Load, stain-normalise per group and window every source (window = 1.25 × ``patch_px``)."""
    images = normalise_by_group(load_images(root, target_mpp))
    size = int(round(1.25 * patch_px))
    return TissueSet(images, label_windows(images, size, target_mpp), size, target_mpp)
