"""One training job end to end: held-out folds, final fit on everything, ONNX export, checks, model card."""

from __future__ import annotations

import datetime as dt
import json
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from micromets.train import morpho
from micromets.train.augment import STAIN_JITTER, describe
from micromets.train.data import Sample
from micromets.train.fit import base_card, cross_validate, export_onnx, normalise_by_group, train_cnn


def split_summary(samples: list[Sample]) -> dict:
    """Per source and group: how many tumour / normal images the model was trained on."""
    counts = Counter((s.source, s.group, s.label) for s in samples)
    out: dict = {}
    for (source, group, label), n in sorted(counts.items()):
        out.setdefault(source, {}).setdefault(group, {"tumour": 0, "normal": 0})["tumour" if label else "normal"] += n
    return out


def train_and_export(samples: list[Sample], out_dir: str | Path, *, name: str, version: str, input_mpp: float,
                     patch_px: int, steps: int, width: int, seed: int, cv_groups: list[str],
                     training_data: list[dict], command: str, licence: str, log=print,
                     checks=None, family: str = "cnn", stain_jitter: tuple[float, ...] = STAIN_JITTER) -> dict:
    """Train, evaluate with ``cv_groups`` held out in turn, export ``out_dir/model.{onnx,json}``; returns the card.

    ``family``: ``cnn`` (:mod:`micromets.train.fit`) or ``morphometry`` (:mod:`micromets.train.morpho`; ``steps``
    and ``width`` unused). ``stain_jitter``: (σ, vector σ) of the H&E stain augmentation. ``checks(detector) -> dict``: extra evaluations of the exported model (e.g.
    unseen-stain tiles), put into ``card["metrics"]``.
    """
    from micromets.model import Detector

    torch.set_num_threads(2)
    t0 = time.perf_counter()
    samples = normalise_by_group(samples)
    kw = {"steps": steps, "width": width, "seed": seed, "stain_jitter": stain_jitter}
    metrics: dict = {}
    if cv_groups:
        if family == "morphometry":
            log("morphometry: leave-one-group-out")
            cv, rows = morpho.cross_validate(samples, cv_groups, patch_px, input_mpp, seed=seed,
                                             stain_jitter=stain_jitter)
        else:
            cv, rows = cross_validate(samples, cv_groups, patch_px, log=log, **kw)
        metrics["held_out"] = {"protocol": "leave one group out over " + ", ".join(cv_groups) +
                               "; out-of-fold centre crops, pooled", **cv}
        metrics["held_out_predictions"] = rows
        log(f"held-out: AUC {cv['auc']:.3f}, sensitivity at 95% specificity "
            f"{cv['sensitivity_at_95_specificity']:.3f}, confusion at 0.5 {cv['confusion']}")
    log(f"final fit on {len(samples)} samples")
    card = base_card(name, version, input_mpp, patch_px, width)
    augmentation = (f"random crop ±10 % scale, 8 dihedral, {describe(stain_jitter)}, brightness ±8 %, "
                    "contrast ±15 %, blur p 0.3")
    card.update({
        "training_data": training_data,
        "split": {"unit": "group (slide / tile / patient)", "held_out_folds": cv_groups,
                  "final_model_trained_on": split_summary(samples)},
        "metrics": metrics,
        "date": dt.date.today().isoformat(), "command": command, "licence": licence,
    })
    if family == "morphometry":
        crops = 6
        x, y = morpho.feature_rows(samples, patch_px, input_mpp, crops, seed, stain_jitter)
        params = morpho.fit_logistic(x, y, morpho.source_weights(samples, crops))
        card.update(morpho.morphometry_card_fields())
        card["training"] = {"rows": int(len(y)), "crops_per_sample": crops, "seed": seed, "augmentation": augmentation,
                            "sampling": "row weights: each class half; each source an equal share of its class"}
        morpho.export_onnx(params, out_dir, card)
    else:
        model = train_cnn(samples, patch_px, log=log, **kw)
        card["training"] = {"steps": steps, "batch": 64, "seed": seed, "optimizer": "AdamW one-cycle, lr 3e-3",
                            "augmentation": augmentation,
                            "sampling": "each class half; each source an equal share of its class",
                            "n_parameters": int(sum(p.numel() for p in model.parameters()))}
        card["onnx_vs_torch_max_abs_diff"] = export_onnx(model, out_dir, card, patch_px, seed)
    if checks is not None:
        card["metrics"].update(checks(Detector.load(out_dir)))
    card["training"]["wall_s"] = round(time.perf_counter() - t0, 1)
    (Path(out_dir) / "model.json").write_text(json.dumps(card, indent=2, default=_json_default) + "\n")
    return card


def _json_default(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
