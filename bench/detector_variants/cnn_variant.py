"""One CNN variant on the held-out protocol of issue 8 (docs/model.md, "Variants tried").

Leave one CAMELYON16 slide out (tumor_001, tumor_004, tumor_064), training data of the lymph-node-he recipe,
pooled out-of-fold probabilities of centre crops and of TTA (5 crops x 8 dihedral, mean); per fold, the share
of tissue patches >= 0.5 on the never-trained CAMELYON17 tiles and of the colorectal TUMOR/TUM tiles >= 0.5.
Writes bench/work/variants/res_NAME.json. Example (the v0.3.0 candidate, seed 0):

    PYTHONPATH=src python bench/detector_variants/cnn_variant.py v1_stain05 --sigma 0.5 --vsigma 0.1

--channels h trains on the haematoxylin amount computed inside the network; --gray P makes a share P of the
crops grey after the stain jitter.
"""
import argparse
import json
import os
import time
from pathlib import Path

import numpy as np, torch
from torch import nn
from micromets import normalise
from micromets.train import recipes, fit, augment, net
from micromets.train.augment import center_crop, dihedral
from micromets.train.recipes import tile_patches

DATA = Path(os.environ.get('MICROMETS_DATA', '../shared/data'))
OUT = Path('bench/work/variants')
OUT.mkdir(parents=True, exist_ok=True)
ap = argparse.ArgumentParser()
ap.add_argument('name'); ap.add_argument('--steps', type=int, default=200); ap.add_argument('--width', type=int, default=16)
ap.add_argument('--sigma', type=float, default=0.25); ap.add_argument('--vsigma', type=float, default=0.05)
ap.add_argument('--channels', default='rgb'); ap.add_argument('--seed', type=int, default=0)
ap.add_argument('--threads', type=int, default=2)
ap.add_argument('--patch', type=int, default=96)
ap.add_argument('--gray', type=float, default=0.0, help='probability of grayscale augmentation')
a = ap.parse_args()
torch.set_num_threads(a.threads)
P = a.patch
# grey crops after the stain jitter (train_cnn passes the strength explicitly)
_orig = augment.stain_jitter
def sj(rgb, rng, sigma=a.sigma, bias=0.05, vector_sigma=a.vsigma, basis_he=normalise.REFERENCE_HE):
    out = _orig(rgb, rng, sigma=sigma, bias=bias, vector_sigma=vector_sigma, basis_he=basis_he)
    if a.gray > 0:
        g = rng.random(len(out)) < a.gray
        if g.any():
            m = out[g].astype(np.float32).mean(-1, keepdims=True)
            out[g] = np.repeat(m, 3, -1).astype(np.uint8)
    return out
augment.stain_jitter = sj

class HNet(nn.Module):
    """haematoxylin concentration (reference basis) computed from the card-scaled RGB, then PatchNet on 1 channel x3."""
    def __init__(self, width):
        super().__init__()
        inv = np.linalg.inv(normalise.complete_basis(normalise.REFERENCE_HE)).astype(np.float32)
        self.register_buffer('h_col', torch.from_numpy(inv[:, 0].copy()).view(1, 3, 1, 1))
        self.net = net.PatchNet(width=width)
    def forward(self, x):
        rgb = (x * 0.25 + 0.5) * 255.0
        od = -torch.log10(torch.clamp(rgb, min=1.0) / 255.0)
        h = (od * self.h_col).sum(1, keepdim=True)
        h = (h - 0.3) / 0.3
        return self.net(h.expand(-1, 3, -1, -1))
if a.channels == 'h':
    net_cls = lambda width: HNet(width)
    fit.PatchNet = net_cls

S = fit.normalise_by_group(recipes.lymph_node_he(DATA, 0.5, P))
unseen = {}
for name in recipes.C17_UNSEEN_TILES:
    x = tile_patches(DATA / 'camelyon17_tiles' / name, 0.24, 0.5, P)
    x = x[normalise.tissue_fraction(x) >= 0.05]
    unseen[name] = normalise.macenko_normalise(x)
# colorectal tumour tiles (never trained on): unseen-stain carcinoma check
from micromets.train.data import load_folder_per_class, load_prefixed_tiles
crc_t = load_folder_per_class(DATA / 'crc_tiles' / 'kather2016', 0.495, 0.5, 'crc', classes={'01_TUMOR': 1}, group_pattern=r'^\w+?_(CRC-Prim-HE-\d+)')
crc_t += load_prefixed_tiles(DATA / 'crc_tiles' / 'nct_crc_he_100k', 0.5, 0.5, 'crc', {'TUM': 1})
crc_t = fit.normalise_by_group(crc_t)

def tta(model, rgb):
    """5 crops (centre + 4 corners) x 8 dihedral, mean probability."""
    h, w = rgb.shape[:2]
    if h < P or w < P:
        rgb = center_crop(rgb, max(P, h, w)); h, w = rgb.shape[:2]
    offs = [((h - P)//2, (w - P)//2), (0, 0), (0, w-P), (h-P, 0), (h-P, w-P)]
    crops = np.stack([dihedral(rgb[y:y+P, x:x+P], k) for y, x in offs for k in range(8)])
    return float(fit.predict_cnn(model, crops).mean())

rows = []; t0 = time.time(); side = {}
for g in recipes.CV_GROUPS:
    train = [s for s in S if s.group != g]; test = [s for s in S if s.group == g]
    model = fit.train_cnn(train, P, steps=a.steps, width=a.width, seed=a.seed, stain_jitter=(a.sigma, a.vsigma), log=lambda m: None)
    pc = fit.predict_cnn(model, np.stack([center_crop(s.rgb, P) for s in test]))
    for s, q in zip(test, pc):
        rows.append({'group': g, 'name': s.name.split('/')[-1], 'label': s.label, 'p': float(q), 'p_tta': tta(model, s.rgb)})
    side[g] = {k: float((fit.predict_cnn(model, v) >= 0.5).mean()) for k, v in unseen.items()}
    side[g]['crc_tumour_ge_0.5'] = float(np.mean([tta(model, s.rgb) >= 0.5 for s in crc_t]))
    print(g, f'{time.time()-t0:.0f}s', flush=True)
y = np.array([r['label'] for r in rows])
res = {'args': vars(a), 'centre': fit.binary_metrics(y, np.array([r['p'] for r in rows])),
       'tta': fit.binary_metrics(y, np.array([r['p_tta'] for r in rows])), 'rows': rows, 'side': side, 'wall_s': time.time()-t0}
json.dump(res, open(OUT / f'res_{a.name}.json', 'w'), indent=1)
for k in ('centre', 'tta'):
    m = res[k]; print(a.name, k, 'AUC %.3f sens95 %.3f' % (m['auc'], m['sensitivity_at_95_specificity']), m['confusion'])
print('side', side)
