"""Nuclear-morphometry variants on the held-out protocol of issue 8 (docs/model.md, "Variants tried").

Features: the 12 of micromets.morphometry (threshold nuclei) + the 9 of log_features.py (Laplacian-of-Gaussian
nuclei) + 3 stain-intensity ratios; training rows = 6 augmented crops per image (stain jitter 0.25 / 0.05),
held-out rows = centre crop and mean over 5 crops; classifiers: class-balanced L2 logistic regression or depth-2
gradient boosting. Prints one line per variant, writes bench/work/variants/res_morph.json. Run from the repository
root: PYTHONPATH=src python bench/detector_variants/morph_variant.py
"""
import json
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from log_features import NAMES as BN, blob_features  # noqa: E402
from micromets import morphometry, normalise
from micromets.train import recipes, fit, augment
from micromets.train.augment import augment_batch, center_crop
from micromets.train.morpho import source_weights
from micromets.train.recipes import tile_patches
from micromets.train.data import load_folder_per_class, load_prefixed_tiles

P = 96
DATA = Path(os.environ.get('MICROMETS_DATA', '../shared/data'))
OUT = Path('bench/work/variants')
OUT.mkdir(parents=True, exist_ok=True)
def feats(x):
    return np.hstack([morphometry.patch_features(x, 0.5), blob_features(x, 0.5)])
NAMES = morphometry.FEATURES + BN
S = fit.normalise_by_group(recipes.lymph_node_he(DATA, 0.5, P))
rng = np.random.default_rng(0)
CROPS = 6
Xtr = feats(augment_batch([s.rgb for s in S for _ in range(CROPS)], P, rng))
ytr = np.repeat([s.label for s in S], CROPS); gtr = np.repeat([s.group for s in S], CROPS)
wtr = source_weights(S, CROPS)
def five(rgb):
    h, w = rgb.shape[:2]
    if h < P or w < P: rgb = center_crop(rgb, max(P, h, w)); h, w = rgb.shape[:2]
    offs = [((h - P)//2, (w - P)//2), (0, 0), (0, w-P), (h-P, 0), (h-P, w-P)]
    return np.stack([rgb[y:y+P, x:x+P] for y, x in offs])
test_idx = [i for i, s in enumerate(S) if s.group in recipes.CV_GROUPS]
Xte5 = feats(np.concatenate([five(S[i].rgb) for i in test_idx])).reshape(len(test_idx), 5, -1)
unseen = {}
for name in recipes.C17_UNSEEN_TILES:
    x = tile_patches(DATA / 'camelyon17_tiles' / name, 0.24, 0.5, P)
    x = x[normalise.tissue_fraction(x) >= 0.05]
    unseen[name] = feats(normalise.macenko_normalise(x))
crc_t = load_folder_per_class(DATA / 'crc_tiles' / 'kather2016', 0.495, 0.5, 'crc', classes={'01_TUMOR': 1}, group_pattern=r'^\w+?_(CRC-Prim-HE-\d+)')
crc_t += load_prefixed_tiles(DATA / 'crc_tiles' / 'nct_crc_he_100k', 0.5, 0.5, 'crc', {'TUM': 1})
crc_t = fit.normalise_by_group(crc_t)
Xcrc = [feats(five(s.rgb)) for s in crc_t]

def add_ratios(X):
    i = NAMES.index
    r1 = X[..., i('blob_contrast_mean')] / (X[..., i('tissue_h_mean')] + 1e-3)
    r2 = X[..., i('blob_h_mean')] / (X[..., i('bg_h_mean')] + 1e-3)
    r3 = X[..., i('stroma_eosin_mean')] / (X[..., i('tissue_h_mean')] + 1e-3)
    return np.concatenate([X, r1[..., None], r2[..., None], r3[..., None]], -1)


Xtr, Xte5 = add_ratios(Xtr), add_ratios(Xte5)
unseen = {k: add_ratios(v) for k, v in unseen.items()}
Xcrc = [add_ratios(v) for v in Xcrc]
NAMES = NAMES + ['contrast_rel', 'blob_h_rel', 'eosin_over_h']


def logistic(c):
    from sklearn.linear_model import LogisticRegression
    def fitf(x, y, w):
        m, sd = x.mean(0), x.std(0) + 1e-6
        clf = LogisticRegression(C=c, max_iter=5000, class_weight='balanced').fit((x - m) / sd, y, sample_weight=w)
        return lambda z: clf.predict_proba((z - m) / sd)[:, 1]
    return fitf
def gbm(depth=2, n=100, lr=0.1):
    from sklearn.ensemble import GradientBoostingClassifier
    def fitf(x, y, w):
        ww = w * np.where(y == 1, 0.5 / w[y == 1].sum(), 0.5 / w[y == 0].sum())
        clf = GradientBoostingClassifier(max_depth=depth, n_estimators=n, learning_rate=lr, subsample=0.8, random_state=0).fit(x, y, sample_weight=ww)
        return lambda z: clf.predict_proba(z)[:, 1]
    return fitf

def run(label, cols, fitf):
    ci = [NAMES.index(c) for c in cols]
    rows = []; side = {}
    for g in recipes.CV_GROUPS:
        tr = gtr != g
        pred = fitf(Xtr[tr][:, ci], ytr[tr], wtr[tr])
        for k, i in enumerate(test_idx):
            if S[i].group != g: continue
            p5 = pred(Xte5[k][:, ci])
            rows.append({'group': g, 'label': S[i].label, 'p': float(p5[0]), 'p_tta': float(p5.mean())})
        side[g] = {n: round(float((pred(v[:, ci]) >= 0.5).mean()), 3) for n, v in unseen.items()}
        side[g]['crc_tumour_ge_0.5'] = float(np.mean([pred(v[:, ci]).mean() >= 0.5 for v in Xcrc]))
    y = np.array([r['label'] for r in rows])
    out = {'label': label, 'cols': cols, 'centre': fit.binary_metrics(y, np.array([r['p'] for r in rows])),
           'tta': fit.binary_metrics(y, np.array([r['p_tta'] for r in rows])), 'rows': rows, 'side': side}
    c, t = out['centre'], out['tta']
    neg066 = max(side[g]['centre_3_patient_066_node_1.jpeg'] for g in side)
    print(f"{label:40s} AUC {c['auc']:.3f}/{t['auc']:.3f} sens95 {c['sensitivity_at_95_specificity']:.2f}/{t['sensitivity_at_95_specificity']:.2f} conf {list(c['confusion'].values())} p066max {neg066:.2f} crc {np.mean([side[g]['crc_tumour_ge_0.5'] for g in side]):.2f}", flush=True)
    return out

OLD = morphometry.FEATURES
results = []
if __name__ == '__main__':
    results.append(run('M0 old12 logistic C0.5', OLD, logistic(0.5)))
    results.append(run('M1 old12 logistic C0.05', OLD, logistic(0.05)))
    results.append(run('M2 blob_contrast+tissue_h C0.05', ['blob_contrast_mean', 'tissue_h_mean'], logistic(0.05)))
    results.append(run('M3 blob5 C0.05', ['blob_per_mm2', 'blob_h_mean', 'blob_contrast_mean', 'tissue_eosin_mean', 'tissue_fraction'], logistic(0.05)))
    results.append(run('M4 all21 logistic C0.05', NAMES[:21], logistic(0.05)))
    results.append(run('M5 all21 gbm d2', NAMES[:21], gbm()))
    results.append(run('M6 blob5 gbm d2', ['blob_per_mm2', 'blob_h_mean', 'blob_contrast_mean', 'tissue_eosin_mean', 'tissue_fraction'], gbm()))
    results.append(run('M7 dens+paleness+eosin+tf gbm d2', ['nuclei_per_mm2', 'blob_h_mean', 'blob_contrast_mean', 'tissue_h_mean', 'stroma_eosin_mean', 'tissue_fraction'], gbm()))
    results.append(run('M8 density only (old) C0.05', ['nuclei_per_mm2'], logistic(0.05)))
    results.append(run('M9 blob density only C0.05', ['blob_per_mm2'], logistic(0.05)))
    results.append(run('M10 density+contrast_rel+blob_h_rel', ['nuclei_per_mm2', 'contrast_rel', 'blob_h_rel'], logistic(0.05)))
    results.append(run('M11 density+eosin_over_h', ['nuclei_per_mm2', 'eosin_over_h'], logistic(0.05)))
    results.append(run('M12 ratios+density+tf', ['nuclei_per_mm2', 'contrast_rel', 'blob_h_rel', 'eosin_over_h', 'tissue_fraction'], logistic(0.05)))
    results.append(run('M13 tissue_h only C0.05', ['tissue_h_mean'], logistic(0.05)))
    json.dump(results, open(OUT / 'res_morph.json', 'w'), indent=1)
