"""Training loop, held-out protocol and ONNX export with the model card.

Protocol (issue 8): out-of-fold predictions with whole groups (slides) held out — for the CAMELYON16 patches
tumor_001, tumor_004 and tumor_064 in turn — pooled over the folds; reported as AUC, sensitivity at 95 %
specificity (threshold = the lowest score that keeps ≥ 95 % of the held-out normals below it) and the confusion
at the operating threshold (0.5). The same model family is then fitted on everything and exported.

Every image is first mapped to the reference stain basis with one Macenko estimate per group (slide, tile or
patient), as the deployed :class:`~micromets.model.Detector` does per slide. Deterministic for a given seed
(torch, numpy and the sampling order are seeded; torch runs on the CPU with a fixed thread count).
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from micromets import normalise
from micromets.model import INK_MAX_FRACTION
from micromets.train.augment import STAIN_JITTER, augment_batch, center_crop
from micromets.train.data import Sample
from micromets.train.net import PatchNet

#: Pixel scaling of the CNN input, written into the card: x/255, then (x - mean) / std per channel.
INPUT_MEAN = [0.5, 0.5, 0.5]
INPUT_STD = [0.25, 0.25, 0.25]


def normalise_by_group(samples: list[Sample], target_he: np.ndarray = normalise.REFERENCE_HE) -> list[Sample]:
    """Map every image onto ``target_he`` with one Macenko estimate per group (all its images pooled)."""
    by_group: dict[str, list[int]] = defaultdict(list)
    for i, s in enumerate(samples):
        by_group[s.group].append(i)
    out = list(samples)
    for idx in by_group.values():
        pooled = np.concatenate([samples[i].rgb.reshape(-1, 3) for i in idx])[None]
        transform = normalise.stain_transform(normalise.macenko_stain_matrix(pooled), target_he)
        for i in idx:
            out[i] = replace(samples[i], rgb=normalise.apply_stain_transform(samples[i].rgb, transform))
    return out


def sampling_weights(samples: list[Sample]) -> np.ndarray:
    """Probabilities: each class half, each source an equal share of its class, uniform within a source."""
    buckets: dict[tuple[int, str], list[int]] = defaultdict(list)
    for i, s in enumerate(samples):
        buckets[(s.label, s.source)].append(i)
    sources_per_label = defaultdict(int)
    for label, _ in buckets:
        sources_per_label[label] += 1
    n_labels = len(sources_per_label)
    w = np.zeros(len(samples))
    for (label, _), idx in buckets.items():
        w[idx] = 1.0 / (n_labels * sources_per_label[label] * len(idx))
    return w / w.sum()


def to_tensor(crops: np.ndarray) -> torch.Tensor:
    """uint8 (N, P, P, 3) → float32 (N, 3, P, P) scaled as the card says (x/255, minus mean, over std)."""
    x = torch.from_numpy(np.ascontiguousarray(crops)).permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor(INPUT_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(INPUT_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def train_cnn(samples: list[Sample], patch_px: int, steps: int = 400, batch: int = 64, width: int = 16,
              lr: float = 3e-3, seed: int = 0, stain_jitter: tuple[float, float] = STAIN_JITTER,
              log=print) -> PatchNet:
    """Train a :class:`PatchNet` on stain-normalised samples for ``steps`` batches of augmented crops.

    ``stain_jitter``: (σ, vector σ) of the H&E stain augmentation (:func:`micromets.train.augment.stain_jitter`).
    """
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    weights = sampling_weights(samples)
    labels = np.array([s.label for s in samples])
    model = PatchNet(width=width)

    def batches():
        idx = rng.choice(len(samples), size=batch, p=weights)
        crops = augment_batch([samples[i].rgb for i in idx], patch_px, rng, stain_jitter)
        return to_tensor(crops), torch.from_numpy(labels[idx])

    return optimise(model, batches, nn.CrossEntropyLoss(label_smoothing=0.05), steps, lr, log, log_every=50)


def optimise(model: nn.Module, batches, loss_fn, steps: int, lr: float, log=print, log_every: int = 100):
    """AdamW (weight decay 1e-3) with a one-cycle schedule peaking at ``lr`` over ``steps`` batches, each
    ``batches()`` → (input, target); logs the mean loss every ``log_every`` steps; returns the model in eval mode."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.15)
    model.train()
    t0, running = time.perf_counter(), 0.0
    for step in range(steps):
        x, y = batches()
        loss = loss_fn(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        running += loss.item()
        if (step + 1) % log_every == 0:
            log(f"  step {step + 1}/{steps} loss {running / log_every:.3f} ({time.perf_counter() - t0:.0f} s)")
            running = 0.0
    return model.eval()


@torch.no_grad()
def predict_cnn(model: nn.Module, rgb: np.ndarray, batch: int = 256) -> np.ndarray:
    """Tumour probability (softmax, class 1) of uint8 (N, P, P, 3) crops, with the torch model."""
    model.eval()
    out = [torch.softmax(model(to_tensor(rgb[i:i + batch])), dim=1)[:, 1].numpy() for i in range(0, len(rgb), batch)]
    return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)


def binary_metrics(y: np.ndarray, p: np.ndarray, threshold: float = 0.5) -> dict:
    """AUC, sensitivity at 95 % specificity and the confusion at ``threshold`` (tumour = positive)."""
    from sklearn.metrics import roc_auc_score

    y, p = np.asarray(y).astype(int), np.asarray(p, dtype=float)
    neg, pos = np.sort(p[y == 0]), p[y == 1]
    # the smallest threshold t with #(normal >= t) <= 5 % of normals; t just above the allowed-th highest normal
    n_fp = int(np.floor(0.05 * len(neg)))
    t95 = float(np.nextafter(neg[len(neg) - n_fp - 1], np.inf)) if len(neg) else float("nan")
    return {
        "n_tumour": int(len(pos)), "n_normal": int(len(neg)),
        "auc": float(roc_auc_score(y, p)) if len(pos) and len(neg) else None,
        "threshold_at_95_specificity": t95,
        "sensitivity_at_95_specificity": float((pos >= t95).mean()) if len(pos) else None,
        "threshold": threshold,
        "confusion": {"tp": int((pos >= threshold).sum()), "fn": int((pos < threshold).sum()),
                      "fp": int((neg >= threshold).sum()), "tn": int((neg < threshold).sum())},
    }


def cross_validate(samples: list[Sample], holdout_groups: list[str], patch_px: int, log=print,
                   **train_kw) -> tuple[dict, list[dict]]:
    """Leave-one-group-out: train without each group, score its samples (centre crops); pooled metrics."""
    rows = []
    for group in holdout_groups:
        train = [s for s in samples if s.group != group]
        test = [s for s in samples if s.group == group]
        if not test:
            raise ValueError(f"held-out group {group!r} has no samples")
        log(f"fold: hold out {group} ({len(test)} samples), train on {len(train)}")
        model = train_cnn(train, patch_px, log=log, **train_kw)
        prob = predict_cnn(model, np.stack([center_crop(s.rgb, patch_px) for s in test]))
        rows += [{"group": s.group, "name": s.name, "label": s.label, "probability": float(q)}
                 for s, q in zip(test, prob)]
    y = np.array([r["label"] for r in rows])
    p = np.array([r["probability"] for r in rows])
    return binary_metrics(y, p), rows


def export_onnx(model: PatchNet, out_dir: str | Path, card: dict, patch_px: int, seed: int = 0) -> float:
    """Write ``model.onnx`` + ``model.json``; returns the max |ONNX − torch| probability difference (checked)."""
    from micromets.model import import_onnxruntime

    ort = import_onnxruntime()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.eval()
    onnx_path = out_dir / "model.onnx"
    torch.onnx.export(model, torch.zeros(1, 3, patch_px, patch_px), str(onnx_path), input_names=["input"],
                      output_names=["logits"], dynamic_axes={"input": {0: "n"}, "logits": {0: "n"}},
                      opset_version=17, dynamo=False)
    x = torch.randn(16, 3, patch_px, patch_px, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        ref = torch.softmax(model(x), dim=1).numpy()
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"input": x.numpy()})[0]
    got = np.exp(got - got.max(axis=1, keepdims=True))
    got /= got.sum(axis=1, keepdims=True)
    diff = float(np.abs(got - ref).max())
    if diff > 1e-4:
        raise RuntimeError(f"ONNX export differs from torch by {diff:.2e}")
    (out_dir / "model.json").write_text(json.dumps(card, indent=2) + "\n")
    return diff


def base_card(name: str, version: str, input_mpp: float, patch_px: int, width: int) -> dict:
    """The card fields fixed by the CNN family and the input pipeline (training data, metrics added by caller)."""
    return {
        "name": name, "version": version, "family": "cnn",
        "architecture": f"PatchNet(width={width}): 7 conv3x3+BN+ReLU, 4 stride-2 stages, global avg pool, linear",
        "input_mpp": input_mpp, "patch_px": patch_px, "channels": "RGB",
        "input": {"layout": "NCHW", "dtype": "float32", "scale": "x/255", "mean": INPUT_MEAN, "std": INPUT_STD},
        "stain_normalisation": {
            "method": "macenko",
            "estimate": "per slide from its tissue (Detector.set_stain_reference), else per predict batch",
            "target": {"stain_vectors_od": normalise.REFERENCE_HE.round(4).tolist(),
                       "rows": ["haematoxylin", "eosin"], "columns": ["R", "G", "B"],
                       "source": "Macenko estimate over the 57 CAMELYON16 patches (CC0)"},
            "concentration_scaling": "none (stain directions only)",
        },
        "tissue_filter": {"beta": 0.15, "min_fraction": 0.05, "ink_max_fraction": INK_MAX_FRACTION,
                          "rule": "patch with < min_fraction of pixels having every channel OD >= beta, or with >= "
                                  "ink_max_fraction of ink or black-pigment pixels "
                                  "(micromets.normalise.ink_fraction), scores 0"},
        "output": "softmax", "classes": ["normal", "tumour"], "tumour_class_index": 1,
        "batch_size": 128,
    }
