"""The nuclear-morphometry detector family: features of :mod:`micromets.morphometry` → logistic regression,
exported as a tiny ONNX graph (standardise, linear, two logits) so it runs through the same Detector seam.

Training rows are ``crops_per_sample`` augmented crops of every stain-normalised sample (same augmentation as the
CNN, so the classifier sees stain and blur variation); held-out rows are centre crops, as for the CNN.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from micromets import morphometry
from micromets.train.augment import STAIN_JITTER, augment_batch, center_crop
from micromets.train.data import Sample
from micromets.train.fit import binary_metrics, sampling_weights


def feature_rows(samples: list[Sample], patch_px: int, mpp: float, crops_per_sample: int, seed: int,
                 stain_jitter: tuple[float, float] = STAIN_JITTER):
    """(features, labels) of augmented crops of every sample (``stain_jitter`` as in :func:`augment_batch`)."""
    rng = np.random.default_rng(seed)
    feats, labels = [], []
    for start in range(0, len(samples), 64):
        chunk = samples[start:start + 64]
        images = [s.rgb for s in chunk for _ in range(crops_per_sample)]
        feats.append(morphometry.patch_features(augment_batch(images, patch_px, rng, stain_jitter), mpp))
        labels += [s.label for s in chunk for _ in range(crops_per_sample)]
    return np.concatenate(feats), np.array(labels)


def fit_logistic(x: np.ndarray, y: np.ndarray, sample_weight: np.ndarray | None = None, c: float = 0.5):
    """Standardisation (mean, std) and an L2 logistic regression on the standardised features."""
    from sklearn.linear_model import LogisticRegression

    mean, std = x.mean(axis=0), x.std(axis=0) + 1e-6
    clf = LogisticRegression(C=c, max_iter=2000, class_weight="balanced")
    clf.fit((x - mean) / std, y, sample_weight=sample_weight)
    return mean.astype(np.float32), std.astype(np.float32), clf.coef_[0].astype(np.float32), float(clf.intercept_[0])


def source_weights(samples: list[Sample], crops: int) -> np.ndarray:
    """Row weights: each source an equal share of its class (as the CNN's sampler)."""
    return np.repeat(sampling_weights(samples) * len(samples), crops)


def predict_logistic(params, x: np.ndarray) -> np.ndarray:
    mean, std, w, b = params
    return 1.0 / (1.0 + np.exp(-(((x - mean) / std) @ w + b)))


def cross_validate(samples: list[Sample], holdout_groups: list[str], patch_px: int, mpp: float,
                   crops_per_sample: int = 6, seed: int = 0,
                   stain_jitter: tuple[float, float] = STAIN_JITTER) -> tuple[dict, list[dict]]:
    """Leave one group out, as :func:`micromets.train.fit.cross_validate`, for the morphometry family."""
    rows = []
    for group in holdout_groups:
        train = [s for s in samples if s.group != group]
        test = [s for s in samples if s.group == group]
        x, y = feature_rows(train, patch_px, mpp, crops_per_sample, seed, stain_jitter)
        params = fit_logistic(x, y, source_weights(train, crops_per_sample))
        prob = predict_logistic(params, morphometry.patch_features(
            np.stack([center_crop(s.rgb, patch_px) for s in test]), mpp))
        rows += [{"group": s.group, "name": s.name, "label": s.label, "probability": float(q)}
                 for s, q in zip(test, prob)]
    y = np.array([r["label"] for r in rows])
    return binary_metrics(y, np.array([r["probability"] for r in rows])), rows


def export_onnx(params, out_dir: str | Path, card: dict) -> None:
    """ONNX graph ``features (N, F) → logits (N, 2)`` = [0, w·(x − mean)/std + b], and the card beside it."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    mean, std, w, b = params
    n_f = len(mean)
    weight = np.column_stack([np.zeros(n_f, np.float32), w]).astype(np.float32)
    bias = np.array([0.0, b], np.float32)
    graph = helper.make_graph(
        [helper.make_node("Sub", ["features", "mean"], ["centred"]),
         helper.make_node("Div", ["centred", "std"], ["scaled"]),
         helper.make_node("MatMul", ["scaled", "weight"], ["linear"]),
         helper.make_node("Add", ["linear", "bias"], ["logits"])],
        "morphometry_logistic",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["n", n_f])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", 2])],
        initializer=[numpy_helper.from_array(mean, "mean"), numpy_helper.from_array(std, "std"),
                     numpy_helper.from_array(weight, "weight"), numpy_helper.from_array(bias, "bias")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="micromets")
    model.ir_version = 8
    onnx.checker.check_model(model)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(out_dir / "model.onnx"))
    (out_dir / "model.json").write_text(json.dumps(card, indent=2) + "\n")


def morphometry_card_fields() -> dict:
    """Card fields specific to the morphometry family."""
    return {
        "family": "morphometry",
        "architecture": "nuclear features (micromets.morphometry) → L2 logistic regression (C 0.5, balanced)",
        "input": {"layout": "features", "dtype": "float32", "features": morphometry.FEATURES,
                  "h_threshold_od": morphometry.H_THRESHOLD, "min_nucleus_um2": morphometry.MIN_NUCLEUS_UM2,
                  "scaling": "inside the ONNX graph (mean, std)"},
    }
