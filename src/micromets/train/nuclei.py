"""Training of the tumour-nucleus classifier (``models/nuclei``) that the H&E cell count uses (:mod:`micromets.cells`).

Each example is the ``PATCH_PX`` field (0.5 µm/px: 16 µm, one nucleus and its rim of cytoplasm) centred on a
nucleus found by :func:`micromets.cells.nucleus_candidates` on the stain-normalised image (Macenko, one estimate per
group, as every recipe). Labels come from what the image is, with the weak-label care of the tissue recipe:

- tumour nucleus: nuclei of at least ``MIN_TUMOUR_UM2`` (lymphocyte nuclei are smaller) in carcinoma images —
  BreCaHAD breast carcinoma (only in windows dense with large nuclei,
  :func:`micromets.train.tissue_data.nuclear_features`, the rule of the tissue recipe) and colorectal TUM tiles;
- other nucleus: every nucleus of normal tissue — CAMELYON17 negative lymph nodes, PCam hard negatives (stroma,
  vessels, histiocytes, germinal centres: every fourth), colorectal lymphocytes, stroma, muscle, debris and fat.

CAMELYON16 is held out whole: the tumour nuclei marked by hand to measure the count
(``bench/data/he_tumour_nuclei_hand.json``) are on CAMELYON16 tiles, so the classifier is judged on slides it never
saw. (Trained with the CAMELYON16 tumour patches too, the count went up to 2–5 × the hand count on tiles of the same
slides: those patches hold lymphocytes, and their large nuclei taught it that lymphocytes of a tumour slide are
tumour.) Only openly licensed sources (CC0, CC BY 4.0), so the weights may be shipped and used beyond research.
Each batch is half tumour, half other nuclei, every source an equal share within its half; augmentation as the
other recipes (:func:`micromets.train.augment.augment_batch`).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from micromets.cells import nucleus_candidates, patches_at
from micromets.tiles import resample
from micromets.train import tissue_data as td
from micromets.train.data import Sample, read_rgb

INPUT_MPP = 0.5
PATCH_PX = 32
#: an example is cut this much larger than the patch, for the random-crop augmentation
EXAMPLE_PX = 40
MIN_TUMOUR_UM2 = 20.0
#: BreCaHAD nuclei count as tumour only in windows this wide (px at INPUT_MPP) dense with large nuclei: the window of
#: the tissue recipe (1.25 × its 96 px patch), judged by the same rule
DENSITY_WINDOW_PX = 120
TRAINING_DATA = [
    {"source": "BreCaHAD (Aksac et al. 2019), 30 breast carcinoma images", "licence": "CC BY 4.0", "label": "tumour"},
    {"source": "CAMELYON17 negative-node tiles (5 centres)", "licence": "CC0 1.0", "label": "other"},
    {"source": "PCam hard negatives (every fourth)", "licence": "CC0 1.0", "label": "other"},
    {"source": "Kather 2016/2019 colorectal tiles: TUM, LYM, STR, MUS, DEB, ADI", "licence": "CC BY 4.0",
     "label": "tumour (TUM) / other"},
]


def load_images(root: str | Path) -> list[Sample]:
    """The training images at :data:`INPUT_MPP`, label 1 = carcinoma, 0 = normal; ``group`` = slide or set."""
    root = Path(root)
    images = []
    for s in td._crc_images(root, INPUT_MPP):
        if s.source in ("crc_carcinoma", "crc_lymphoid", "crc_stroma", "crc_muscle_vessel", "crc_debris_blood",
                        "crc_fat"):
            images.append(Sample(s.rgb, int(s.source == "crc_carcinoma"), s.group, s.source, s.name))
    for path in sorted((root / "breast_he" / "brecahad" / "images").glob("*.jpg")):
        images.append(Sample(resample(read_rgb(path), td.BRECAHAD_MPP, INPUT_MPP), 1, "brecahad:all", "brecahad",
                             str(path)))
    for path in sorted((root / "camelyon17_tiles").glob("*.jpeg")):
        images.append(Sample(resample(read_rgb(path), td.C17_MPP, INPUT_MPP), 0,
                             "c17:" + "_".join(path.name.split("_")[:2]), "c17_negative", str(path)))
    for path in sorted((root / "pcam_hard_negatives" / "normal").iterdir())[::4]:
        images.append(Sample(resample(read_rgb(path), td.PCAM_MPP, INPUT_MPP), 0, "pcam", "pcam_hard_negative",
                             str(path)))
    return images


def examples(images: list[Sample]) -> dict[str, np.ndarray]:
    """Cut one :data:`EXAMPLE_PX` field per labelled nucleus of each (stain-normalised) image: ``crops``,
    ``labels`` (1 tumour nucleus), ``sources``."""
    crops, labels, sources = [], [], []
    for s in images:
        cands = nucleus_candidates(s.rgb, INPUT_MPP)
        keep = np.ones(len(cands.xy_px), bool)
        if s.label == 1:
            keep &= cands.area_um2 >= MIN_TUMOUR_UM2
            if s.source == "brecahad":
                frac, large = td.nuclear_features(s.rgb, INPUT_MPP, DENSITY_WINDOW_PX)
                dense = (frac >= td.DENSE_UNMASKED[0]) & (large >= td.DENSE_UNMASKED[1])
                yx = np.round(cands.xy_px[:, ::-1]).astype(int)
                keep &= dense[yx[:, 0], yx[:, 1]]
        if keep.any():
            crops.append(patches_at(s.rgb, cands.xy_px[keep], EXAMPLE_PX))
            n = int(keep.sum())
            labels += [s.label] * n
            sources += [s.source] * n
    return {"crops": np.concatenate(crops), "labels": np.array(labels), "sources": np.array(sources)}


def sampling_weights(labels: np.ndarray, sources: np.ndarray) -> np.ndarray:
    """Half tumour, half other; every source an equal share of its half; uniform within a source."""
    w = np.zeros(len(labels))
    for lab in (0, 1):
        names = np.unique(sources[labels == lab])
        for name in names:
            idx = (labels == lab) & (sources == name)
            w[idx] = 1.0 / (2 * len(names) * idx.sum())
    return w / w.sum()


def fit(ex: dict[str, np.ndarray], steps: int = 1500, width: int = 8, seed: int = 0, log=print):
    """A :class:`~micromets.train.net.PatchNet` trained on the examples (see the module docstring)."""
    import torch
    from torch import nn

    from micromets.train.augment import augment_batch
    from micromets.train.fit import optimise, to_tensor
    from micromets.train.net import PatchNet

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    p = sampling_weights(ex["labels"], ex["sources"])
    model = PatchNet(width=width)

    def batches():
        idx = rng.choice(len(p), size=128, p=p)
        crops = augment_batch([ex["crops"][i] for i in idx], PATCH_PX, rng)
        return to_tensor(crops), torch.from_numpy(ex["labels"][idx]).long()

    return optimise(model, batches, nn.CrossEntropyLoss(label_smoothing=0.05), steps, 3e-3, log, log_every=250)


def train_nuclei(data_root: str | Path, out: str | Path, *, steps: int, width: int, seed: int, name: str,
                 version: str, command: str, hand_counts: Path | None = None, log=print) -> dict:
    """Train on every source and write ``out/model.onnx`` + ``model.json``; with ``hand_counts`` (the hand-marked
    CAMELYON16 tiles, ``bench/data/he_tumour_nuclei_hand.json``, never trained on) the new model is measured on them
    (:func:`micromets.evaluation.hand_counts.score`) and the result goes into the card's ``metrics``."""
    from micromets.train.fit import base_card, export_onnx, normalise_by_group

    start = time.perf_counter()
    ex = examples(normalise_by_group(load_images(data_root)))
    log(f"{len(ex['labels'])} nuclei ({int(ex['labels'].sum())} tumour) from "
        f"{len(np.unique(ex['sources']))} sources")
    model = fit(ex, steps=steps, width=width, seed=seed, log=log)
    card = base_card(name, version, INPUT_MPP, PATCH_PX, width) | {
        "kind": "nucleus-classifier",
        "purpose": "tumour nucleus or not, for the H&E tumour-cell count (micromets.cells); not a tissue detector",
        "classes": ["other nucleus", "tumour nucleus"], "tumour_class_index": 1, "threshold": 0.5,
        "tissue_filter": {"beta": 0.15, "min_fraction": 0.0, "ink_max_fraction": 1.0, "rule": "none"},
        "candidates": "micromets.cells.nucleus_candidates on the stain-normalised image at input_mpp",
        "training_data": TRAINING_DATA,
        "held_out": "CAMELYON16, whole (the hand-marked tiles of bench/data/he_tumour_nuclei_hand.json are from it)",
        "examples": {"nuclei": int(len(ex["labels"])), "tumour": int(ex["labels"].sum()),
                     "per_source": {s: int((ex["sources"] == s).sum()) for s in np.unique(ex["sources"])}},
        "licence": "CC BY 4.0 (trained on CC0 and CC BY 4.0 data; credit BreCaHAD, Kather et al., CAMELYON17, PCam)",
        "command": command, "date": time.strftime("%Y-%m-%d"),
        "training": {"steps": steps, "batch": 128, "seed": seed, "wall_s": round(time.perf_counter() - start)},
    }
    card["onnx_vs_torch_max_abs_diff"] = export_onnx(model, out, card, PATCH_PX, seed)
    if hand_counts is not None:
        from micromets.evaluation.hand_counts import score

        card["metrics"] = {"hand_counts": score(hand_counts, out)}
        (Path(out) / "model.json").write_text(json.dumps(card, indent=2) + "\n")
        log(f"hand counts: {card['metrics']['hand_counts']['summary']}")
    return card
