"""The shipped default model's recipe: which real data, which split, which checks (``micromets train --recipe``).

``lymph-node-he`` (all under ../shared/data, see its README):

- tumour: CAMELYON16 tumour patches (slides tumor_001, tumor_064; 0.243 µm/px). Colorectal TUMOR tiles are
  left out: with them the held-out AUC was 0.687 and sensitivity at 95 % specificity 0.07, without them 0.701
  and 0.29 (colorectal adenocarcinoma's dense dark glandular nuclei are not what a breast metastasis looks like);
- normal: CAMELYON16 normal patches (tumor_004, tumor_064), the negative CAMELYON17 tiles of centres 0 and 2
  (patient_006_node_1, patient_056_node_1; ≈0.24 µm/px, whole tile = normal node incl. capsule, vessels,
  sinus), colorectal STROMA, LYMPHO, DEBRIS, ADIPOSE, EMPTY (Kather 2016) and ADI, BACK, DEB, LYM, MUS, STR (NCT);
- never trained on (unseen-stain checks): CAMELYON17 tiles of centre 3 (patient_066_node_1, negative),
  centre 1 (patient_024_node_2, ITC node) and centre 4 (patient_097_node_3, macro node); colorectal COMPLEX,
  MUCOSA, NORM, MUC (ambiguous for a lymph-node detector), TUMOR and TUM (see above).

Held-out protocol: leave one CAMELYON16 slide out (tumor_001, tumor_004, tumor_064), pooled. With the default
stain jitter (σ 0.25, vectors 0.05) the CNN reaches AUC 0.685 (the shipped v0.2.0; 0.698 ± 0.107 over five seeds);
with ``--stain-jitter 0.5,0.1`` 0.796 (0.750 ± 0.046), but that model draws the demo's deposits about one heatmap
cell too large and is not shipped. Nuclear morphometry (12 threshold features or Laplacian-of-Gaussian nuclear
features, logistic or depth-2 boosting), test-time augmentation and CNN + morphometry ensembles all ranked worse;
docs/model.md has the table.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from micromets.tiles import resample
from micromets.train.data import Sample, cut, load_folder_per_class, load_prefixed_tiles, read_rgb

C16_MPP = 0.243
C17_MPP = 0.24
KATHER2016_MPP = 0.495
NCT_MPP = 0.5

C17_TRAIN_TILES = ["centre_0_patient_006_node_1.jpeg", "centre_2_patient_056_node_1.jpeg"]
#: tiles never seen in training, with their official node label
C17_UNSEEN_TILES = {"centre_3_patient_066_node_1.jpeg": "negative", "centre_1_patient_024_node_2.jpeg": "itc",
                    "centre_4_patient_097_node_3.jpeg": "macro"}
KATHER_CLASSES = {"02_STROMA": 0, "04_LYMPHO": 0, "05_DEBRIS": 0, "07_ADIPOSE": 0, "08_EMPTY": 0}
NCT_CLASSES = {"ADI": 0, "BACK": 0, "DEB": 0, "LYM": 0, "MUS": 0, "STR": 0}
CV_GROUPS = ["tumor_001", "tumor_004", "tumor_064"]



def normal_sources(kather_classes: dict[str, int], nct_classes: dict[str, int]) -> list[dict]:
    """Model-card entries (name, path, licence, µm/px) of the normal tissue :func:`lymph_node_he` loads besides
    CAMELYON16: the CAMELYON17 training tiles and the colorectal classes given."""
    return [
        {"name": "CAMELYON17 negative tiles " + ", ".join(C17_TRAIN_TILES), "path": "camelyon17_tiles",
         "licence": "CC0", "mpp": C17_MPP},
        {"name": "Kather 2016 colorectal tiles " + ", ".join(sorted(kather_classes)), "path": "crc_tiles/kather2016",
         "licence": "CC BY 4.0 (Kather et al. 2016, Sci Rep 6:27988)", "mpp": KATHER2016_MPP},
        {"name": "NCT-CRC-HE-100K tiles " + ", ".join(sorted(nct_classes)), "path": "crc_tiles/nct_crc_he_100k",
         "licence": "CC BY 4.0 (Kather et al. 2019, PLoS Med 16:e1002730)", "mpp": NCT_MPP},
    ]


TRAINING_DATA = [
    {"name": "CAMELYON16 patches (57 lymph-node H&E, slides tumor_001, tumor_004, tumor_064)",
     "path": "camelyon16_patches", "licence": "CC0", "mpp": C16_MPP},
    *normal_sources(KATHER_CLASSES, NCT_CLASSES),
]


def lymph_node_he(data_root: str | Path, target_mpp: float, patch_px: int,
                  kather_classes: dict[str, int] = KATHER_CLASSES,
                  nct_classes: dict[str, int] = NCT_CLASSES) -> list[Sample]:
    """All training samples of the ``lymph-node-he`` recipe at ``target_mpp`` (big tiles cut to 1.25 × patch);
    ``kather_classes`` / ``nct_classes`` choose the colorectal classes (another recipe may take fewer)."""
    root = Path(data_root)
    samples = load_folder_per_class(root / "camelyon16_patches", C16_MPP, target_mpp, "camelyon16")
    for name in C17_TRAIN_TILES:
        path = root / "camelyon17_tiles" / name
        tile = Sample(resample(read_rgb(path), C17_MPP, target_mpp), 0, "c17_" + name.split("_", 2)[2][:11],
                      "camelyon17_tiles", str(path))
        samples += cut(tile, int(round(1.25 * patch_px)))
    samples += load_folder_per_class(root / "crc_tiles" / "kather2016", KATHER2016_MPP, target_mpp, "crc",
                                     classes=kather_classes, group_pattern=r"^\w+?_(CRC-Prim-HE-\d+)")
    samples += load_prefixed_tiles(root / "crc_tiles" / "nct_crc_he_100k", NCT_MPP, target_mpp, "crc", nct_classes)
    return samples


def tile_patches(path: str | Path, mpp: float, target_mpp: float, patch_px: int) -> np.ndarray:
    """Non-overlapping ``patch_px`` patches (N, P, P, 3) of an image file resampled to ``target_mpp``."""
    rgb = resample(read_rgb(Path(path)), mpp, target_mpp)
    n_r, n_c = rgb.shape[0] // patch_px, rgb.shape[1] // patch_px
    cells = rgb[:n_r * patch_px, :n_c * patch_px].reshape(n_r, patch_px, n_c, patch_px, 3).swapaxes(1, 2)
    return np.ascontiguousarray(cells.reshape(-1, patch_px, patch_px, 3))


def unseen_tile_check(detector, data_root: str | Path, threshold: float = 0.5,
                      fraction_key: str = "fraction_above_threshold") -> dict:
    """Score every patch of the never-trained CAMELYON17 tiles with the deployed detector (per-tile stain estimate).

    For the negative tile, every patch above ``threshold`` is a false positive on an unseen stain; the share of
    patches at or above it is reported under ``fraction_key``.
    """
    out = {}
    for name, node_label in C17_UNSEEN_TILES.items():
        patches = tile_patches(Path(data_root) / "camelyon17_tiles" / name, C17_MPP, detector.input_mpp,
                               detector.patch_px)
        detector.set_stain_reference(patches)
        prob = detector.predict(patches)
        detector.set_stain_reference(None)
        out[name] = {"node_label": node_label, "n_patches": int(len(prob)),
                     fraction_key: round(float((prob >= threshold).mean()), 4),
                     "mean_probability": round(float(prob.mean()), 4),
                     "max_probability": round(float(prob.max()), 4)}
    return out
