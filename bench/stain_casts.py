"""Stain casts (issue 14): what the training's stain normalisation leaves on each source, and whether it explains
why models that never saw BACH find so few of its carcinoma fields.

    PYTHONPATH=src .venv/bin/python bench/stain_casts.py [--data-root ../shared/data]
        [--model bench/work/models/fold1 --model bench/work/models/fold1-s1 ...]

1. per group, the Macenko estimate the training uses (all the group's pixels pooled, ``fit.normalise_by_group``)
   and the same without ink (ink pixels, ``normalise.ink_pixels``, and 5 px around them left out), in degrees
   from the reference basis;
2. per source after that normalisation, the residual amount per eosin amount of the eosin-dominant tissue pixels
   (median, 10th and 90th percentile): the colour cast the residual channel keeps;
3. for each ``--model`` (a fold-1 model, which never saw BACH A03): BACH's annotated carcinoma windows and its
   unannotated (normal breast) windows, normalised four ways (the pooled estimate, the ink-free one, the
   ink-free one rebuilt from haematoxylin and eosin only, and the ink-free one unmixed from the red and green
   absorbance only, blue ignored), each window's network probability with no further normalisation: carcinoma
   windows found at 0.5, normal windows called tumour at 0.5, and the AUC between them.

Writes bench/results/stain-casts-<UTC>.json and .md (docs/model.md, "Stain casts").
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import numpy as np
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parent))

from reporting import utc_stamp, write_report  # noqa: E402

from micromets import normalise  # noqa: E402
from micromets.train.augment import center_crop  # noqa: E402
from micromets.train.tissue_data import ANY_NORMAL, CARCINOMA, label_windows, load_images  # noqa: E402

INK_FRINGE_PX = 5


def degrees(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.degrees(np.arccos(np.clip(abs(a @ b) / np.linalg.norm(a) / np.linalg.norm(b), -1.0, 1.0))))


def estimate(images: list[np.ndarray], without_ink: bool) -> np.ndarray:
    """Macenko H and E of the images' pixels pooled, optionally away from ink."""
    keep = [im.reshape(-1, 3) if not without_ink else
            im[~ndimage.binary_dilation(normalise.ink_pixels(im), iterations=INK_FRINGE_PX)] for im in images]
    return normalise.macenko_stain_matrix(np.concatenate(keep)[None])


def two_stain_transform(source_he: np.ndarray) -> np.ndarray:
    """The OD map onto the reference that rebuilds haematoxylin and eosin only (the residual amount dropped)."""
    src = normalise.complete_basis(source_he).astype(np.float64)
    dst = normalise.complete_basis(normalise.REFERENCE_HE).astype(np.float64)
    return (np.linalg.inv(src)[:, :2] @ dst[:2]).astype(np.float32)


def red_green_transform(source_he: np.ndarray) -> np.ndarray:
    """The OD map onto the reference that reads haematoxylin and eosin from the red and green absorbance alone (two
    stains, two channels: solved exactly) and ignores the blue; nothing is carried into the residual."""
    src = normalise.complete_basis(source_he).astype(np.float64)[:2]
    dst = normalise.complete_basis(normalise.REFERENCE_HE).astype(np.float64)[:2]
    return np.vstack([np.linalg.inv(src[:, :2]) @ dst, np.zeros((1, 3))]).astype(np.float32)


def residual_per_eosin(images: list[np.ndarray]) -> dict:
    px = np.concatenate([im.reshape(-1, 3) for im in images])
    od = normalise.optical_density(px[::max(1, len(px) // 200_000)][None])[0].astype(np.float64)
    amounts = od[(od >= 0.15).all(axis=1)] @ np.linalg.inv(normalise.complete_basis(normalise.REFERENCE_HE))
    eosin = amounts[amounts[:, 1] > amounts[:, 0]]
    ratio = eosin[:, 2] / eosin[:, 1]
    return {f"p{q}": round(float(np.percentile(ratio, q)), 3) for q in (10, 50, 90)}


def bach_scores(model_dir: str, bach: list, transforms: dict[str, np.ndarray]) -> dict:
    from sklearn.metrics import roc_auc_score

    from micromets.model import Detector

    detector = Detector.load(model_dir)
    detector._stain_method = "none"   # the windows come normalised, as the held-out protocol scores them
    detector._tissue_min_fraction, detector._ink_max_fraction = 0.0, 1.0
    labelled = label_windows([replace(s, rgb=normalise.apply_stain_transform(s.rgb, transforms["pooled"]))
                              for s in bach], 120, 0.5)
    out = {}
    for name, transform in transforms.items():
        rgb = [normalise.apply_stain_transform(s.rgb, transform) for s in bach]
        p = {label: detector.predict(np.stack([center_crop(rgb[w.image][w.y:w.y + 120, w.x:w.x + 120], 96)
                                               for w in labelled if w.label == label]))
             for label in (CARCINOMA, ANY_NORMAL)}
        y = np.r_[np.ones(len(p[CARCINOMA])), np.zeros(len(p[ANY_NORMAL]))]
        out[name] = {"carcinoma_windows": len(p[CARCINOMA]), "normal_windows": len(p[ANY_NORMAL]),
                     "carcinoma_found": round(float((p[CARCINOMA] >= 0.5).mean()), 3),
                     "normal_called": round(float((p[ANY_NORMAL] >= 0.5).mean()), 3),
                     "auc": round(float(roc_auc_score(y, np.r_[p[CARCINOMA], p[ANY_NORMAL]])), 3)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-root", type=Path, default=Path("../shared/data"))
    ap.add_argument("--model", action="append", default=[], help="a fold-1 model folder (repeat for seeds)")
    ap.add_argument("--out", type=Path, default=Path("bench/results"))
    args = ap.parse_args()
    images = load_images(args.data_root, 0.5)
    groups, sources = defaultdict(list), defaultdict(list)
    for s in images:
        groups[s.group].append(s)
    ref = normalise.REFERENCE_HE
    estimates, lines = {}, ["# Stain casts", "", "| group | pooled H / E (° from reference) | without ink H / E |",
                            "|---|---|---|"]
    for group, members in sorted(groups.items()):
        pooled, clean = estimate([s.rgb for s in members], False), estimate([s.rgb for s in members], True)
        estimates[group] = {"pooled": pooled.round(3).tolist(), "without_ink": clean.round(3).tolist(),
                            "pooled_deg": [round(degrees(pooled[k], ref[k]), 1) for k in (0, 1)],
                            "without_ink_deg": [round(degrees(clean[k], ref[k]), 1) for k in (0, 1)]}
        lines.append(f"| {group} | {estimates[group]['pooled_deg'][0]} / {estimates[group]['pooled_deg'][1]} | "
                     f"{estimates[group]['without_ink_deg'][0]} / {estimates[group]['without_ink_deg'][1]} |")
        transform = normalise.stain_transform(pooled)
        for s in members:
            sources[s.source].append(normalise.apply_stain_transform(s.rgb, transform))
    casts = {source: residual_per_eosin(rgbs) for source, rgbs in sorted(sources.items())}
    lines += ["", "| source | residual per eosin, p10 / median / p90 |", "|---|---|"]
    lines += [f"| {k} | {v['p10']:+.3f} / {v['p50']:+.3f} / {v['p90']:+.3f} |" for k, v in casts.items()]
    bach = groups["bach:A03"]
    clean = np.asarray(estimates["bach:A03"]["without_ink"], np.float32)
    transforms = {"pooled": normalise.stain_transform(np.asarray(estimates["bach:A03"]["pooled"], np.float32)),
                  "without_ink": normalise.stain_transform(clean), "without_ink_two_stain": two_stain_transform(clean),
                  "without_ink_red_green": red_green_transform(clean)}
    models = {m: bach_scores(m, bach, transforms) for m in args.model}
    if models:
        lines += ["", "| model | BACH normalised | carcinoma windows found | normal windows called | AUC |",
                  "|---|---|---|---|---|"]
        lines += [f"| {m} | {k} | {v['carcinoma_found']} | {v['normal_called']} | {v['auc']} |"
                  for m, rows in models.items() for k, v in rows.items()]
    write_report(args.out / f"stain-casts-{utc_stamp()}", {"estimates": estimates, "residual_per_eosin": casts,
                                                          "bach_by_model": models}, "\n".join(lines))


if __name__ == "__main__":
    main()
