"""Recipe ``coarse-screen``: the tiny CNN of ``--mode fast``, tumour vs normal at 2 µm/px (``micromets train
--recipe coarse-screen``).

The coarse screen looks at every tissue cell of a slide at low resolution (32 px = 64 µm cells) and only has to
say *where the fine model should look*; it runs at a low (high-sensitivity) threshold. Data (all under
../shared/data, see its README), each resampled to ``COARSE_MPP``:

- breast IDC (Janowczyk & Madabhushi 2016, J Pathol Inform 7:29; ≈4 µm/px, 50 × 50 px, upsampled to 100 px):
  tumour = class 1, normal breast tissue = class 0. Research use only (the original release states no licence);
  the card says so. Split BY PATIENT: a fixed, seeded ``HOLDOUT_FRACTION`` of the patients is never trained on
  and gives the held-out AUC in the card (the shipped weights are this very model, not a refit);
- lymph node: CAMELYON16 patches, tumour (breast-cancer metastasis; tumor_001, tumor_064) and normal (tumor_004,
  tumor_064) (CC0; 62 µm fields = 31 px here), the negative CAMELYON17 tiles of centres 0 and 2 (CC0; cut into
  40 px squares), the colorectal LYMPHO/STROMA/ADIPOSE/EMPTY tiles (Kather 2016) and LYM/STR/ADI/BACK
  (NCT-CRC-HE-100K) (CC BY 4.0). These patches are also the texture of the phantom slides, so the screen's
  phantom results are on seen tissue;
- never trained on (checks in the card): CAMELYON17 tiles of centre 3 (patient_066_node_1, negative), centre 1
  (patient_024_node_2, ITC node) and centre 4 (patient_097_node_3, macro node), scored patch by patch.

Why 2 µm/px and not the IDC's native 4: trained at 4 µm/px (32 px = 128 µm) on IDC + normal node only, the
screen scored phantom lymph node as high as phantom tumour (dense lymphocytes and carcinoma look alike at
4 µm/px); with the CAMELYON16 tumour patches added it still flagged 42–67 % of normal phantom cells at its
95 %-sensitivity threshold (held-out IDC AUC 0.70 and 0.64). At 2 µm/px the CAMELYON16 fields fill a whole
patch without padding and nuclear size begins to show: 28–40 % flagged, held-out IDC AUC 0.67.

The screen's operating point (``screen_threshold`` in the card) keeps 95 % of the held-out IDC tumour patches;
``--mode fast`` confirms every candidate with the fine model.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from micromets.train.data import Sample, load_idc
from micromets.train.recipes import C16_MPP, lymph_node_he, normal_sources, unseen_tile_check

COARSE_MPP = 2.0
COARSE_PATCH_PX = 32
IDC_MPP = 4.0
HOLDOUT_FRACTION = 0.2
#: normal classes of the colorectal tiles (no tumour, mucosa or debris)
KATHER_NORMAL = {"02_STROMA": 0, "04_LYMPHO": 0, "07_ADIPOSE": 0, "08_EMPTY": 0}
NCT_NORMAL = {"ADI": 0, "BACK": 0, "LYM": 0, "STR": 0}

TRAINING_DATA = [
    {"name": "Breast Histopathology Images (IDC), training patients only", "path": "idc_breast",
     "licence": "research use only: Janowczyk & Madabhushi 2016 (J Pathol Inform 7:29); original release states "
                "no licence", "mpp": IDC_MPP},
    {"name": "CAMELYON16 patches, tumour (tumor_001, tumor_064) and normal (tumor_004, tumor_064)",
     "path": "camelyon16_patches", "licence": "CC0", "mpp": C16_MPP},
    *normal_sources(KATHER_NORMAL, NCT_NORMAL),
]


def split_patients(idc_root: str | Path, seed: int = 0, fraction: float = HOLDOUT_FRACTION) -> tuple[list, list]:
    """IDC patient folders split into (train, held-out) by a seeded permutation; ``fraction`` held out."""
    patients = sorted(p.name for p in Path(idc_root).iterdir() if p.is_dir())
    order = np.random.default_rng(seed).permutation(len(patients))
    n_out = int(round(fraction * len(patients)))
    held = sorted(patients[i] for i in order[:n_out])
    return sorted(set(patients) - set(held)), held


def lymph_node(data_root: str | Path, target_mpp: float, patch_px: int) -> list[Sample]:
    """The lymph-node (tumour and normal) and node-like colorectal (normal) samples of the recipe at ``target_mpp``
    (the ``lymph-node-he`` data with fewer colorectal classes; the CAMELYON17 tiles cut into ``1.25 × patch_px``
    squares)."""
    return lymph_node_he(data_root, target_mpp, patch_px, kather_classes=KATHER_NORMAL, nct_classes=NCT_NORMAL)


def train_coarse(data_root: str | Path, out_dir: str | Path, *, steps: int = 1500, width: int = 8, seed: int = 0,
                 name: str = "micromets-coarse-screen", version: str = "0.1.0", command: str = "",
                 log=print) -> dict:
    """Train the coarse screen, evaluate it on the held-out IDC patients, export ``out_dir/model.{onnx,json}``.

    The screening threshold in the card (``screen_threshold``) is the held-out score that keeps 95 % of the
    held-out IDC tumour patches at or above it (sensitivity 0.95): a candidate region, not a diagnosis.
    """
    import torch

    from micromets.model import Detector
    from micromets.train.augment import center_crop
    from micromets.train.build import split_summary
    from micromets.train.fit import base_card, binary_metrics, export_onnx, normalise_by_group, predict_cnn, train_cnn

    torch.set_num_threads(2)
    t0 = time.perf_counter()
    root = Path(data_root)
    train_patients, held_patients = split_patients(root / "idc_breast", seed)
    idc = load_idc(root / "idc_breast", COARSE_MPP, mpp=IDC_MPP, patients=train_patients)
    held = load_idc(root / "idc_breast", COARSE_MPP, mpp=IDC_MPP, patients=held_patients)
    # one sampling source for all lymph-node data: each class is then half IDC (upsampled, softer) and half
    # lymph node (sharp), so sharpness cannot stand in for the label
    node = [replace(s, source="lymph_node") for s in lymph_node(root, COARSE_MPP, COARSE_PATCH_PX)]
    samples = normalise_by_group(idc + node)
    held = normalise_by_group(held)
    log(f"coarse screen: {len(samples)} training samples ({len(train_patients)} IDC patients + lymph node), "
        f"{len(held)} held-out IDC patches of {len(held_patients)} patients")
    model = train_cnn(samples, COARSE_PATCH_PX, steps=steps, width=width, seed=seed, log=log)
    y = np.array([s.label for s in held])
    prob = predict_cnn(model, np.stack([center_crop(s.rgb, COARSE_PATCH_PX) for s in held]))
    metrics = binary_metrics(y, prob)
    screen_threshold = float(np.quantile(prob[y == 1], 0.05))
    per_patient = [binary_metrics(y[m], prob[m])["auc"] for m in
                   (np.array([s.group == p for s in held]) for p in held_patients) if len(set(y[m])) == 2]
    metrics.update(protocol=f"IDC patients split by patient (seed {seed}): {len(held_patients)} held out, never "
                            "trained on; centre crops",
                   held_out_patients=held_patients, median_auc_per_patient=float(np.median(per_patient)),
                   screen_threshold_sensitivity=float((prob[y == 1] >= screen_threshold).mean()),
                   screen_threshold_specificity=float((prob[y == 0] < screen_threshold).mean()))
    log(f"held-out IDC: AUC {metrics['auc']:.3f} (median per patient {metrics['median_auc_per_patient']:.3f}); "
        f"screen threshold {screen_threshold:.3f}: sensitivity {metrics['screen_threshold_sensitivity']:.3f}, "
        f"specificity {metrics['screen_threshold_specificity']:.3f}")
    card = base_card(name, version, COARSE_MPP, COARSE_PATCH_PX, width)
    card["tissue_filter"].update(  # the screen keeps inked tissue; the fine pass applies its own ink test
        ink_max_fraction=1.0, rule="patch with < min_fraction of pixels having every channel OD >= beta scores 0; no "
        "ink test (ink_max_fraction 1): the screen keeps inked tissue for the fine pass, which applies its own")
    card.update({
        "purpose": "coarse screen of --mode fast: candidate regions for the fine model, never a diagnosis on its "
                   "own; isolated tumour cells (< 0.2 mm) may vanish at this resolution",
        "screen_threshold": round(screen_threshold, 4),
        "training_data": TRAINING_DATA,
        "split": {"unit": "patient (IDC), tile / slide (normal node)", "held_out_idc_patients": held_patients,
                  "final_model_trained_on": split_summary(samples)},
        "metrics": {"held_out_idc": metrics},
        "date": dt.date.today().isoformat(), "command": command,
        "licence": "Apache-2.0 (weights); trained on research-use-only IDC data, see training_data",
        "training": {"steps": steps, "batch": 64, "seed": seed, "optimizer": "AdamW one-cycle, lr 3e-3",
                     "sampling": "each class half; each source an equal share of its class",
                     "n_parameters": int(sum(p.numel() for p in model.parameters()))},
    })
    card["onnx_vs_torch_max_abs_diff"] = export_onnx(model, out_dir, card, COARSE_PATCH_PX, seed)
    card["metrics"]["unseen_lymph_node_tiles"] = unseen_tile_check(Detector.load(out_dir), root, screen_threshold,
                                                                      "fraction_above_screen_threshold")
    card["training"]["wall_s"] = round(time.perf_counter() - t0, 1)
    (Path(out_dir) / "model.json").write_text(json.dumps(card, indent=2) + "\n")
    return card
