"""Tissue-class detector: training with partial labels, whole-source held-out folds, per-source report.

Training (:func:`train_tissue`): a :class:`~micromets.train.net.PatchNet` with one output per
:data:`~micromets.train.tissue_data.CLASSES`; a window labelled with a class gets the cross-entropy of that class,
a window labelled :data:`~micromets.train.tissue_data.ANY_NORMAL` the cross-entropy of "not carcinoma"
(``-log Σ p_normal classes``). Each batch is half carcinoma, half normal windows; within each half every source
(:attr:`Sample.source`) has an equal share. Augmentation as the binary recipe (:mod:`micromets.train.augment`).

Normal composites (:func:`normal_composite`): every normal training window of a source is pure tissue of one kind, but
in a node the capsule, trabeculae and perinodal fat lie *against* the lymphoid parenchyma; a field straddling such
a border (dense small nuclei beside a pink fibrous band) was never shown as normal and looks like nests in stroma.
A share :data:`COMPOSITE_SHARE` of the normal half of each batch is therefore a window of node parenchyma
(:data:`PARENCHYMA`) joined to a window of another normal source (stroma, fat, muscle / vessel, debris, glass, PCam
hard negative, normal breast) along a straight or gently curved boundary, or crossed by a band of it
(:data:`BAND_UM`), or (the edge of a node: parenchyma, capsule, then glass or fat) a band with a window of
:data:`OUTSIDE` beyond it; labelled :data:`~micromets.train.tissue_data.ANY_NORMAL`. Carcinoma windows are never
composited.

Hard normals (:func:`mine_hard_normals`): halfway through training (:data:`MINE_AT`), the model scores every normal
training window and a fresh set of composites, and the :data:`HARD_TOP` it finds most carcinoma-like (a dense
stroma, a germinal centre, a capsule edge), an equal quota from each normal source and from the composites, become
a pool from which a share :data:`HARD_SHARE` of the normal half
of every later batch is drawn (bootstrapping, Sung & Poggio 1998; the hard-negative mining of the CAMELYON16
winners, Wang et al. 2016). Their labels stay what they were.

Multiple-instance bags (``mil``, measured and not adopted: docs/model.md): the issue's other answer to weak tile
labels. A tile of a :data:`~micromets.train.tissue_data.WEAK_CARCINOMA` source is a bag
(:func:`~micromets.train.tissue_data.tile_bags`): at least one of its windows is carcinoma. Every batch also holds
:data:`MIL_BAGS` bags (an equal share per source) of :data:`MIL_WINDOWS` of their windows drawn at random, each
bag's loss ``-log`` of the mean of its :data:`MIL_TOP` highest carcinoma probabilities (:func:`bag_loss`), added to
the windows' loss; ``"add"`` keeps the nuclear window selection beside the bags, ``"only"`` drops the selected
windows of those sources and learns them from the bags alone.

Held-out protocol (:func:`held_out_report`): for each fold of :data:`~micromets.train.tissue_data.FOLDS` a model is
trained without the fold's groups (a CAMELYON16 slide, MoNuSeg patients, the BACH slide, BreCaHAD, a colorectal
tile set, a third of the PCam hard negatives, a CAMELYON17 centre) and scores every window of them. Per source:

- CAMELYON16 patches: AUC of the centre crop, pooled over the three folds;
- carcinoma sources: share of images found (max over the image's windows >= threshold, as ``score-tiles`` does),
  the same over the images that hold a labelled carcinoma window (``share_labelled_images_found``: a partly
  annotated BACH tile whose coarse mask covers only fat or stroma holds carcinoma by its label, not by what it
  shows) and share of its labelled carcinoma windows >= threshold;
- normal sources: share of windows >= threshold, and share of images with any window >= threshold.

Every number is reported per seed and as mean ± sd over seeds (never the best seed).
"""

from __future__ import annotations

import json
import math
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from torch import nn

from micromets.train.augment import augment_batch, center_crop, describe
from micromets.train.fit import optimise, to_tensor
from micromets.train.net import PatchNet
from micromets.train.tissue_data import (ANY_NORMAL, BENCH_RESERVED, CARCINOMA, CLASSES, FOLDS, WEAK_CARCINOMA,
                                         TissueSet, _grid, _stained, tile_bags)

TISSUE_STAIN_JITTER = (0.5, 0.1)
#: share of the normal half of a batch that is a composite of two normal windows (module docstring)
COMPOSITE_SHARE = 0.35
#: normal sources that are node parenchyma: one side of every composite
PARENCHYMA = ("crc_lymphoid", "c16_normal", "c17_negative")
#: what lies outside a node's capsule: beyond the band of an edge composite
OUTSIDE = ("crc_background", "crc_fat")
#: width of a band of the other tissue laid across the parenchyma (a capsule or trabecula); the share of composites
#: that are bands, and of those (given an outside window) the share that are node edges
BAND_UM, BAND_SHARE, EDGE_SHARE = (10.0, 40.0), 0.6, 0.5
#: hard normals: mined once this share of the steps is done, from every normal window and MINE_COMPOSITES fresh
#: composites; the HARD_TOP most carcinoma-like are kept and make HARD_SHARE of the normal half of later batches
MINE_AT, MINE_COMPOSITES, HARD_TOP, HARD_SHARE = 0.5, 4000, 2000, 0.25
#: multiple-instance bags (module docstring): "add" beside the nuclear selection, "only" instead of it; bags per
#: batch, windows drawn per bag, highest carcinoma probabilities pooled per bag
MIL_MODES = ("add", "only")
MIL_BAGS, MIL_WINDOWS, MIL_TOP = 4, 8, 2


def sampling_weights(ts: TissueSet, keep: np.ndarray) -> np.ndarray:
    """Probability of each window: carcinoma / normal half each, equal share per source, uniform within."""
    labels, sources = ts.labels(), ts.sources()
    tumour = labels == CARCINOMA
    w = np.zeros(len(labels))
    for half in (True, False):
        in_half = keep & (tumour == half)
        names = np.unique(sources[in_half])
        for name in names:
            idx = in_half & (sources == name)
            w[idx] = 1.0 / (2 * len(names) * idx.sum())
    return w / w.sum()


def partial_label_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy; for ANY_NORMAL the target is the set of normal classes (log of their summed probability)."""
    logp = torch.log_softmax(logits, dim=1)
    normal = torch.logsumexp(torch.cat([logp[:, :CARCINOMA], logp[:, CARCINOMA + 1:]], dim=1), dim=1)
    exact = logp.gather(1, labels.clamp(min=0)[:, None])[:, 0]
    return -torch.where(labels == ANY_NORMAL, normal, exact).mean()


def bag_loss(logits: torch.Tensor, top: int = MIL_TOP) -> torch.Tensor:
    """Mean over bags of ``-log`` of the mean of each bag's ``top`` highest carcinoma probabilities; ``logits``
    (bags, windows, classes)."""
    best = torch.topk(torch.log_softmax(logits, dim=-1)[..., CARCINOMA], top, dim=1).values
    return -(torch.logsumexp(best, dim=1) - math.log(top)).mean()


def bag_windows(ts: TissueSet, bags: list[tuple[int, np.ndarray]], rng: np.random.Generator, n_bags: int = MIL_BAGS,
                n_windows: int = MIL_WINDOWS) -> list[np.ndarray]:
    """``n_bags`` bags of :func:`~micromets.train.tissue_data.tile_bags` (each source an equal share), ``n_windows``
    of each bag's windows drawn at random (with replacement only when it has fewer): their pixels, bag after bag."""
    sources = np.array([ts.images[i].source for i, _ in bags])
    p = np.array([1.0 / (sources == s).sum() for s in sources])
    out = []
    for b in rng.choice(len(bags), size=n_bags, p=p / p.sum()):
        i, origins = bags[b]
        pick = origins[rng.choice(len(origins), size=n_windows, replace=len(origins) < n_windows)]
        out += [ts.images[i].rgb[y:y + ts.size, x:x + ts.size] for y, x in pick]
    return out


def window_pixels(ts: TissueSet, index: int) -> np.ndarray:
    w = ts.windows[index]
    return ts.images[w.image].rgb[w.y:w.y + ts.size, w.x:w.x + ts.size]


def normal_composite(a: np.ndarray, b: np.ndarray, rng: np.random.Generator, mpp: float = 0.5,
                     c: np.ndarray | None = None) -> np.ndarray:
    """Window ``a`` (node parenchyma) with part of window ``b`` (another normal tissue) laid over it: a half-plane
    behind a straight or gently curved boundary through the central half of the window, or (share
    :data:`BAND_SHARE`) a band :data:`BAND_UM` wide across it; given ``c`` (glass or fat), a share
    :data:`EDGE_SHARE` of the bands have ``c`` beyond them (a node's edge: parenchyma, capsule, outside). All uint8
    RGB, any sizes; the result has ``a``'s size (the others centre-cropped or reflection-padded to it), each
    boundary softened over ~1 px."""
    h, w = a.shape[:2]
    b = center_crop(b, max(h, w))[:h, :w]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    angle = rng.uniform(0.0, np.pi)
    normal, along = np.array([np.cos(angle), np.sin(angle)]), np.array([-np.sin(angle), np.cos(angle)])
    cy, cx = rng.uniform(0.25, 0.75) * h, rng.uniform(0.25, 0.75) * w
    t = (yy - cy) * along[0] + (xx - cx) * along[1]
    bend = rng.uniform(0.0, 0.15) * max(h, w) * np.sin(2 * np.pi * t / (rng.uniform(1.0, 3.0) * max(h, w))
                                                       + rng.uniform(0, 2 * np.pi))
    d = (yy - cy) * normal[0] + (xx - cx) * normal[1] + bend  # px from the boundary
    if rng.random() >= BAND_SHARE:
        alpha = np.clip(0.5 + d, 0.0, 1.0)[..., None]       # 1: b, 0: a
        return (a * (1.0 - alpha) + b * alpha + 0.5).astype(np.uint8)
    half_px = rng.uniform(*BAND_UM) / (2 * mpp)
    edge = c is not None and rng.random() < EDGE_SHARE
    alpha = np.clip(0.5 + half_px - np.abs(d), 0.0, 1.0)[..., None]  # 1: inside the band
    beyond = a
    if edge:
        beyond_alpha = np.clip(0.5 + d - half_px, 0.0, 1.0)[..., None]  # 1: past the band, away from a
        beyond = a * (1.0 - beyond_alpha) + center_crop(c, max(h, w))[:h, :w] * beyond_alpha
    return (beyond * (1.0 - alpha) + b * alpha + 0.5).astype(np.uint8)


def composite_pools(ts: TissueSet, p: np.ndarray) -> tuple[tuple[np.ndarray, np.ndarray], ...] | None:
    """(indices, probabilities) of the parenchyma windows, of the other normal windows and of the :data:`OUTSIDE`
    windows, each drawn with its share of ``p`` (equal per source); None when ``p`` leaves either of the first two
    empty (the third may be empty)."""
    sources = ts.sources()
    normal, parenchyma = (ts.labels() != CARCINOMA) & (p > 0), np.isin(sources, PARENCHYMA)
    pools = []
    for side in (parenchyma, ~parenchyma, np.isin(sources, OUTSIDE)):
        idx = np.flatnonzero(normal & side)
        pools.append((idx, p[idx] / p[idx].sum() if len(idx) else idx))
    return tuple(pools) if len(pools[0][0]) and len(pools[1][0]) else None


def composites(ts: TissueSet, pools, n: int, rng: np.random.Generator) -> list[np.ndarray]:
    """``n`` :func:`normal_composite` windows from ``pools`` (:func:`composite_pools`)."""
    (par, p_par), (other, p_other), (outside, p_outside) = pools
    first, second = rng.choice(par, size=n, p=p_par), rng.choice(other, size=n, p=p_other)
    third = rng.choice(outside, size=n, p=p_outside) if len(outside) else [None] * n
    return [normal_composite(window_pixels(ts, i), window_pixels(ts, j), rng, ts.mpp,
                             None if m is None else window_pixels(ts, m)) for i, j, m in zip(first, second, third)]


def batch_windows(ts: TissueSet, p: np.ndarray, batch: int, rng: np.random.Generator,
                  composite_share: float = COMPOSITE_SHARE, pools=None,
                  hard: tuple[list[np.ndarray], np.ndarray] | None = None) -> tuple[list[np.ndarray], np.ndarray]:
    """One training batch before augmentation: ``batch`` windows drawn with ``p``, of which each normal one is
    replaced with probability ``composite_share`` by a :func:`normal_composite` of a parenchyma window, another
    normal window and an outside window (``pools``: :func:`composite_pools`), and then, given ``hard`` (the
    (pixels, labels) of :func:`mine_hard_normals`), with probability :data:`HARD_SHARE` by one of those;
    → (window pixels, labels)."""
    labels = ts.labels()
    idx = rng.choice(len(p), size=batch, p=p)
    out, out_labels = [window_pixels(ts, i) for i in idx], labels[idx].copy()
    normal = out_labels != CARCINOMA
    pools = pools if pools is not None else composite_pools(ts, p)
    if pools is not None and composite_share > 0:
        swap = np.flatnonzero(normal & (rng.random(batch) < composite_share))
        for k, window in zip(swap, composites(ts, pools, len(swap), rng)):
            out[k], out_labels[k] = window, ANY_NORMAL
    if hard is not None and len(hard[1]):
        swap = np.flatnonzero(normal & (rng.random(batch) < HARD_SHARE))
        for k, j in zip(swap, rng.integers(0, len(hard[1]), size=len(swap))):
            out[k], out_labels[k] = hard[0][j], hard[1][j]
    return out, out_labels


def mine_hard_normals(model: nn.Module, ts: TissueSet, p: np.ndarray, pools, rng: np.random.Generator,
                      patch_px: int = 96, n_composites: int = MINE_COMPOSITES,
                      top: int = HARD_TOP) -> tuple[list[np.ndarray], np.ndarray]:
    """The most carcinoma-like normal training windows (those ``p`` draws) and ``n_composites`` fresh composites,
    by ``model``'s carcinoma probability of their centre crop: ``top`` in all, an equal quota from each normal
    source and from the composites (a quota a source cannot fill goes to the others), so that a source with few
    windows (colorectal stroma: ~20 tiles) is not crowded out by thousands of composites; → (window pixels,
    labels), composites labelled ANY_NORMAL. ``model`` is left in training mode."""
    labels, sources = ts.labels(), ts.sources()
    normal = np.flatnonzero((labels != CARCINOMA) & (p > 0))
    pixels = [window_pixels(ts, i) for i in normal]
    window_labels, groups = list(labels[normal]), list(sources[normal])
    if pools is not None and n_composites:
        pixels += composites(ts, pools, n_composites, rng)
        window_labels += [ANY_NORMAL] * n_composites
        groups += ["composite"] * n_composites
    model.eval()
    score = np.concatenate([carcinoma_probability(model, np.stack([center_crop(w, patch_px)
                                                                   for w in pixels[i:i + 1024]]))
                            for i in range(0, len(pixels), 1024)])
    model.train()
    keep = _quota_top(score, np.asarray(groups), top)
    return [pixels[i] for i in keep], np.asarray(window_labels)[keep]


def _quota_top(score: np.ndarray, groups: np.ndarray, top: int) -> np.ndarray:
    """Indices of the ``top`` highest ``score``, at most an equal quota per group; the quota of a group with fewer
    items is shared among the others (water-filling), highest score first."""
    ranked = {g: np.flatnonzero(groups == g)[np.argsort(-score[groups == g], kind="stable")] for g in np.unique(groups)}
    sizes = {g: len(r) for g, r in ranked.items()}
    quota, left = dict.fromkeys(ranked, 0), min(top, len(score))
    while left:
        open_groups = [g for g in ranked if quota[g] < sizes[g]]
        share = max(1, left // len(open_groups))
        for g in open_groups:
            take = min(share, sizes[g] - quota[g], left)
            quota[g] += take
            left -= take
            if not left:
                break
    keep = np.concatenate([ranked[g][:quota[g]] for g in ranked])
    return keep[np.argsort(-score[keep], kind="stable")]


def train_tissue(ts: TissueSet, keep: np.ndarray, patch_px: int = 96, steps: int = 1000, batch: int = 64,
                 width: int = 16, lr: float = 3e-3, seed: int = 0,
                 stain_jitter: tuple[float, ...] = TISSUE_STAIN_JITTER, composite_share: float = COMPOSITE_SHARE,
                 mine_at: float | None = MINE_AT, mil: str | None = None, log=print) -> PatchNet:
    """Train on the windows where ``keep`` is True (see the module docstring); ``mine_at`` None: no hard normals;
    ``mil``: one of :data:`MIL_MODES`, with multiple-instance bags of the weak carcinoma tiles it keeps a window of."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    bags = []
    if mil is not None:
        bags = tile_bags(ts, {w.image for w, k in zip(ts.windows, keep) if k})
        if mil == "only":
            keep = keep & ~(np.isin(ts.sources(), WEAK_CARCINOMA) & (ts.labels() == CARCINOMA))
        log(f"  multiple-instance bags ({mil}): {len(bags)} tiles, {MIL_BAGS} per batch × {MIL_WINDOWS} windows, "
            f"top {MIL_TOP}")
    p = sampling_weights(ts, keep)
    pools = composite_pools(ts, p)
    model = PatchNet(width=width, n_classes=len(CLASSES))
    mine_step = None if mine_at is None else int(mine_at * steps)
    state = {"step": 0, "hard": None}

    def batches():
        if state["step"] == mine_step:
            t0 = time.perf_counter()
            state["hard"] = mine_hard_normals(model, ts, p, pools, rng, patch_px)
            log(f"  step {mine_step}: mined {len(state['hard'][1])} hard normals, an equal quota per normal source "
                f"and the composites ({time.perf_counter() - t0:.0f} s)")
        state["step"] += 1
        windows, labels = batch_windows(ts, p, batch, rng, composite_share, pools, state["hard"])
        if bags:
            windows += bag_windows(ts, bags, rng)
        crops = augment_batch(windows, patch_px, rng, stain_jitter)
        return to_tensor(crops), torch.from_numpy(labels)

    def loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        n = len(labels)
        windows = partial_label_loss(logits[:n], labels)
        return windows + bag_loss(logits[n:].reshape(MIL_BAGS, MIL_WINDOWS, -1)) if bags else windows

    return optimise(model, batches, loss, steps, lr, log)


@torch.no_grad()
def carcinoma_probability(model: nn.Module, crops: np.ndarray, batch: int = 512) -> np.ndarray:
    """Carcinoma-class softmax of uint8 (N, P, P, 3) crops."""
    out = [torch.softmax(model(to_tensor(crops[i:i + batch])), dim=1)[:, CARCINOMA].numpy()
           for i in range(0, len(crops), batch)]
    return np.concatenate(out) if out else np.zeros(0, np.float32)


def score_images(model, ts: TissueSet, image_ids: list[int], patch_px: int = 96) -> dict[int, np.ndarray]:
    """Carcinoma probability of every tissue window of each image (:func:`image_windows`).

    ``model`` is a torch module being trained, or a shipped :class:`micromets.model.Detector` (stain vectors
    estimated per image, as ``score-tiles`` does), so both are judged on the same windows. A detector with a
    context model gives each window ``min(own, context)`` (:func:`with_context`: a lower bound of the heatmap's)."""
    out = {}
    for i in image_ids:
        centres, crops = image_windows(ts, i, patch_px)
        out[i] = with_context(model, ts.images[i].rgb, ts.mpp, centres, _probability(model, crops, stain_from=crops))
    return out


def image_windows(ts: TissueSet, i: int, patch_px: int = 96) -> tuple[np.ndarray, np.ndarray]:
    """The windows of image ``i`` that are scored, and their centres (N, 2 as y, x px): every window with tissue
    (stride half a patch) of a tile; the centre of a patch, or of a tile with no stained window."""
    rgb = ts.images[i].rgb
    h, w = rgb.shape[:2]
    stained = _stained(rgb)
    origins = [] if max(h, w) <= 1.3 * ts.size or ts.images[i].source == "pcam_hard_negative" else [
        (y, x) for y, x in _grid(h, w, patch_px, patch_px // 2)
        if stained[y:y + patch_px, x:x + patch_px].mean() >= 0.05]
    if origins:
        crops = np.stack([rgb[y:y + patch_px, x:x + patch_px] for y, x in origins])
    else:
        origins, crops = [((h - patch_px) // 2, (w - patch_px) // 2)], center_crop(rgb, patch_px)[None]
    return np.asarray(origins, np.float64) + patch_px / 2, crops


def with_context(model, rgb: np.ndarray, mpp: float, centres_px: np.ndarray, fine: np.ndarray) -> np.ndarray:
    """``fine`` (the probabilities of windows of ``rgb`` at ``mpp`` µm/px centred at ``centres_px``, (N, 2) as
    y, x) lowered to what the context model of a :class:`micromets.model.Detector` gives the larger field around
    each centre, window by window; unchanged for a torch module or a detector without one. On a slide,
    :func:`micromets.heatmap.context_check` does this only in a positive region where the context model calls no
    field tumour, and a region it calls somewhere keeps its scores: these held-out numbers are a lower bound of the
    heatmap's, for carcinoma and normal tissue alike. The image is resampled to the context model's µm/px and
    reflected beyond its edges (a field that overhangs a tile sees a mirror of it, where a slide would show the
    tissue around)."""
    context = getattr(model, "context", None)
    if context is None:
        return fine
    from micromets.tiles import resample

    p = context.patch_px
    small = resample(rgb, mpp, context.input_mpp)
    padded = np.pad(small, ((p, p), (p, p), (0, 0)), mode="reflect")
    corners = np.round(np.asarray(centres_px) * (mpp / context.input_mpp) - p / 2).astype(int) + p
    fields = np.stack([padded[y:y + p, x:x + p] for y, x in corners])
    return np.minimum(fine, context.predict(fields))


def _probability(model, crops: np.ndarray, stain_from: np.ndarray | None = None) -> np.ndarray:
    """Carcinoma probability of ``crops`` by a torch module or a :class:`micromets.model.Detector` (its stain
    vectors estimated from ``stain_from``; None: per predict batch)."""
    if isinstance(model, nn.Module):
        return carcinoma_probability(model, crops)
    model.set_stain_reference(stain_from)
    return model.predict(crops)


def labelled_window_scores(model, ts: TissueSet, labelled: list[int], patch_px: int) -> dict[int, float]:
    """The carcinoma probability of each annotated carcinoma window in ``labelled`` (its centre crop; with a
    detector's context model, :func:`with_context` of the field around it)."""
    if not labelled:
        return {}
    crops = np.stack([center_crop(window_pixels(ts, k), patch_px) for k in labelled])
    fine = _probability(model, crops)
    if getattr(model, "context", None) is None:
        return dict(zip(labelled, fine))
    out = {}
    for image in sorted({ts.windows[k].image for k in labelled}):
        mine = [j for j, k in enumerate(labelled) if ts.windows[k].image == image]
        centres = np.array([(ts.windows[labelled[j]].y + ts.size / 2, ts.windows[labelled[j]].x + ts.size / 2)
                            for j in mine])
        scores = with_context(model, ts.images[image].rgb, ts.mpp, centres, fine[mine])
        out.update({labelled[j]: float(v) for j, v in zip(mine, scores)})
    return out


def is_carcinoma_source(source: str) -> bool:
    """Whether a source holds carcinoma (its images are judged on finding it) or only normal tissue."""
    return "carcinoma" in source or source == "c16_tumour"


def fixed_model_report(detector, ts: TissueSet, threshold: float = 0.5, groups: list[str] | None = None) -> dict:
    """Every source of ``ts`` scored by one exported model (no training): the same per-source numbers as
    :func:`held_out_report`, for comparing a shipped model with the recipe. Sources the model trained on are
    not held out for it: its card's ``training_data`` says which. ``groups``: only the images of these groups
    (such as the ``held_out_groups`` of a fold's model)."""
    ids = sorted({w.image for w in ts.windows if groups is None or ts.images[w.image].group in groups})
    image_scores = score_images(detector, ts, ids, detector.patch_px)
    labelled = [k for k, w in enumerate(ts.windows) if w.label == CARCINOMA and w.image in set(ids)]
    window_scores = labelled_window_scores(detector, ts, labelled, detector.patch_px)
    table = source_report(ts, image_scores, window_scores, threshold)
    table.update(c16_auc(c16_patch_scores(ts, image_scores, ids)))
    context = getattr(detector, "context", None)
    return {"model": f"{detector.name} {detector.card.get('version', '')}", "threshold": threshold,
            "trained_on": [d.get("path") for d in detector.card.get("training_data", [])], "table": table,
            **({"context": {"model": f"{context.name} {context.version}", "field_um": context.cell_um,
                            "held_out_groups": context.card.get("held_out_groups")}} if context else {})}


def source_report(ts: TissueSet, image_scores: dict[int, np.ndarray], window_scores: dict[int, float],
                  threshold: float = 0.5) -> dict:
    """Per source: images found / called tumour, windows at or above ``threshold`` (module docstring)."""
    rows: dict = defaultdict(lambda: {"images": 0, "images_positive": 0, "windows": 0, "windows_positive": 0,
                                      "labelled_carcinoma_windows": 0, "labelled_carcinoma_found": 0,
                                      "labelled_images": 0, "labelled_images_positive": 0})
    for i, scores in image_scores.items():
        r = rows[ts.images[i].source]
        r["images"] += 1
        r["images_positive"] += int(scores.max() >= threshold)
        r["windows"] += len(scores)
        r["windows_positive"] += int((scores >= threshold).sum())
    for k, score in window_scores.items():
        if ts.windows[k].label == CARCINOMA:
            r = rows[ts.images[ts.windows[k].image].source]
            r["labelled_carcinoma_windows"] += 1
            r["labelled_carcinoma_found"] += int(score >= threshold)
    for i in {ts.windows[k].image for k in window_scores if ts.windows[k].label == CARCINOMA} & set(image_scores):
        r = rows[ts.images[i].source]
        r["labelled_images"] += 1
        r["labelled_images_positive"] += int(image_scores[i].max() >= threshold)
    out = {}
    for source, r in sorted(rows.items()):
        carcinoma = is_carcinoma_source(source)
        out[source] = {
            "kind": "carcinoma" if carcinoma else "normal", "images": r["images"],
            ("share_images_found" if carcinoma else "share_images_called_tumour"):
                round(r["images_positive"] / r["images"], 4),
            "share_windows_at_or_above": round(r["windows_positive"] / max(1, r["windows"]), 4),
        }
        if carcinoma and r["labelled_carcinoma_windows"]:
            out[source]["labelled_window_sensitivity"] = round(
                r["labelled_carcinoma_found"] / r["labelled_carcinoma_windows"], 4)
        if carcinoma and r["labelled_images"]:
            out[source]["labelled_images"] = r["labelled_images"]
            out[source]["share_labelled_images_found"] = round(r["labelled_images_positive"] / r["labelled_images"], 4)
    return out


def operating_point(ts: TissueSet, image_scores: dict[int, np.ndarray], window_scores: dict[int, float],
                    normal_share: float = 0.05) -> dict:
    """The lowest threshold at which the held-out normal sources call on average at most ``normal_share`` of their
    windows tumour (each source weighs the same, however many windows it has), and at it the mean share of
    labelled carcinoma windows found over the carcinoma sources: where a lesion's confirmed probability should
    stand for this recipe, read from tissue no fold's model saw."""
    normal, carcinoma = defaultdict(list), defaultdict(list)
    for i, scores in image_scores.items():
        source = ts.images[i].source
        if not is_carcinoma_source(source):
            normal[source].append(scores)
    for k, score in window_scores.items():
        carcinoma[ts.images[ts.windows[k].image].source].append(score)
    normal = {s: np.concatenate(v) for s, v in normal.items()}
    carcinoma = {s: np.asarray(v) for s, v in carcinoma.items()}
    grid = np.round(np.arange(0.50, 1.0, 0.01), 2)
    fp = np.array([np.mean([(v >= t).mean() for v in normal.values()]) for t in grid])
    t = float(grid[np.argmax(fp <= normal_share)]) if (fp <= normal_share).any() else 1.0
    return {"kind": "operating point", "threshold": t,
            "normal_window_share": round(float(np.mean([(v >= t).mean() for v in normal.values()])), 4),
            "carcinoma_window_sensitivity": round(float(np.mean([(v >= t).mean() for v in carcinoma.values()])), 4)
            if carcinoma else None,
            "normal_window_share_at_0_5": round(float(fp[0]), 4)}


def fold_keep(ts: TissueSet, fold: str) -> np.ndarray:
    return ~np.isin(ts.groups(), sorted(FOLDS[fold]))


def run_fold(ts: TissueSet, fold: str, seed: int, steps: int, patch_px: int = 96, width: int = 16,
             stain_jitter: tuple[float, ...] = TISSUE_STAIN_JITTER, mil: str | None = None, log=print) -> dict:
    """Train without the fold's groups, score them: image scores, labelled-window scores, C16 centre crops."""
    keep = fold_keep(ts, fold)
    model = train_tissue(ts, keep, patch_px=patch_px, steps=steps, width=width, seed=seed,
                         stain_jitter=stain_jitter, mil=mil, log=log)
    held_images = sorted({w.image for w, k in zip(ts.windows, keep) if not k})
    image_scores = score_images(model, ts, held_images, patch_px)
    labelled = [k for k, w in enumerate(ts.windows) if not keep[k] and w.label == CARCINOMA]
    window_scores = labelled_window_scores(model, ts, labelled, patch_px)
    return {"fold": fold, "seed": seed, "image_scores": image_scores, "window_scores": window_scores,
            "c16": c16_patch_scores(ts, image_scores, held_images), "model": model}


def c16_patch_scores(ts: TissueSet, image_scores: dict[int, np.ndarray], ids) -> dict[int, dict]:
    """The CAMELYON16 patches among images ``ids``: image index → {name, label (1 tumour), probability (its
    centre window)}."""
    return {i: {"name": ts.images[i].name, "label": int(ts.images[i].source == "c16_tumour"),
                "probability": float(image_scores[i][0])} for i in ids if ts.images[i].source.startswith("c16")}


def c16_auc(c16: dict[int, dict]) -> dict:
    """``{"c16_patches": {kind, images, auc}}`` of :func:`c16_patch_scores` rows; empty unless both classes are
    there."""
    from sklearn.metrics import roc_auc_score

    y = np.array([row["label"] for row in c16.values()])
    p = np.array([row["probability"] for row in c16.values()])
    if len(set(y.tolist())) != 2:
        return {}
    return {"c16_patches": {"kind": "both", "images": int(len(y)), "auc": round(float(roc_auc_score(y, p)), 4)}}


def held_out_report(ts: TissueSet, seeds: list[int], steps: int, patch_px: int = 96, width: int = 16,
                    threshold: float = 0.5, folds: list[str] | None = None, save_models=None,
                    stain_jitter: tuple[float, ...] = TISSUE_STAIN_JITTER, mil: str | None = None, log=print) -> dict:
    """Every fold × seed (module docstring); per seed the per-source table and the pooled CAMELYON16 AUC, then
    mean ± sd over seeds of every number. ``folds``: only these folds of FOLDS (a quicker check: each source is
    held out in one fold, so its numbers are the full protocol's; the AUC needs both CAMELYON16 classes). With more
    than one seed, ``ensemble`` holds the same table for the seeds' models averaged (mean probability per window).
    ``save_models``: a folder where every fold × seed model is exported as ``<fold>-s<seed>`` (ONNX + card naming
    its ``held_out_groups``), to run on tissue of the sources it never saw. ``stain_jitter``: the recipe's stain
    augmentation (:func:`micromets.train.augment.stain_jitter`: σ, vector σ[, cast]). ``mil``: train with
    multiple-instance bags (:data:`MIL_MODES`, module docstring).
    """
    folds = list(folds or FOLDS)
    per_seed, scores = {}, {}
    for seed in seeds:
        image_scores, window_scores, c16 = {}, {}, {}
        for fold in folds:
            log(f"seed {seed}, {fold}: hold out {', '.join(sorted(FOLDS[fold]))}")
            r = run_fold(ts, fold, seed, steps, patch_px, width, stain_jitter, mil, log=log)
            if save_models is not None:
                from micromets.train.fit import export_onnx

                card = tissue_card(r["model"], f"micromets-tissue-{fold}", f"0.0.{seed}", ts.mpp, patch_px, width,
                                   steps, seed, int(fold_keep(ts, fold).sum()), fold,
                                   command=f"held_out_report(seeds={seeds}, steps={steps}, mpp={ts.mpp}, "
                                           f"stain_jitter={stain_jitter}, mil={mil!r})", stain_jitter=stain_jitter,
                                   mil=mil)
                export_onnx(r["model"], Path(save_models) / f"{fold}-s{seed}", card, patch_px, seed)
            image_scores.update(r["image_scores"])
            window_scores.update(r["window_scores"])
            c16.update(r["c16"])
        scores[seed] = (image_scores, window_scores, c16)
        per_seed[str(seed)] = _held_out_table(ts, image_scores, window_scores, c16, threshold)
        log(f"seed {seed}: {per_seed[str(seed)]}")
    ensemble = None
    if len(seeds) > 1:  # the seeds' models averaged
        ensemble = _held_out_table(ts, *averaged_scores([scores[s] for s in seeds]), threshold)
    summary: dict = {}
    for source in per_seed[str(seeds[0])]:
        for key, value in per_seed[str(seeds[0])][source].items():
            if isinstance(value, float):
                vals = [per_seed[str(s)][source][key] for s in seeds]
                summary.setdefault(source, {})[key] = {"mean": round(float(np.mean(vals)), 4),
                                                       "sd": round(float(np.std(vals, ddof=1)), 4)
                                                       if len(vals) > 1 else None, "per_seed": vals}
    return {"protocol": f"whole sources held out in {len(folds)} of the 3 folds (micromets.train.tissue_data.FOLDS); "
                        "every window of a held-out image scored (stride half a patch); CAMELYON16 AUC pooled over "
                        "the folds",
            "folds": {k: sorted(FOLDS[k]) for k in folds}, "threshold": threshold, "seeds": seeds,
            "steps": steps, "stain_jitter": list(stain_jitter), "mil": mil, "summary": summary, "per_seed": per_seed,
            **({"ensemble": {"members": seeds, "combination": "mean carcinoma probability of the seeds' models",
                             "table": ensemble}} if ensemble else {})}


def averaged_scores(runs: list[tuple[dict, dict, dict]]) -> tuple[dict, dict, dict]:
    """The held-out scores of several models averaged (an ensemble: the mean of their carcinoma probabilities),
    window by window: each run is (image → window probabilities, labelled window → probability, CAMELYON16 image
    → {label, probability}) over the same windows."""
    first = runs[0]
    return ({i: np.mean([r[0][i] for r in runs], axis=0) for i in first[0]},
            {k: float(np.mean([r[1][k] for r in runs])) for k in first[1]},
            {i: {**row, "probability": float(np.mean([r[2][i]["probability"] for r in runs]))}
             for i, row in first[2].items()})


def _held_out_table(ts: TissueSet, image_scores: dict, window_scores: dict, c16: dict, threshold: float) -> dict:
    """The per-source table of one set of held-out scores, with its operating point and the pooled CAMELYON16
    AUC (``c16``: :func:`c16_patch_scores`)."""
    table = source_report(ts, image_scores, window_scores, threshold)
    table["operating_point"] = operating_point(ts, image_scores, window_scores)
    table.update(c16_auc(c16))
    return table


TRAINING_DATA = [
    {"name": "CAMELYON16 patches (tumor_001, tumor_004, tumor_064)", "path": "camelyon16_patches", "licence": "CC0",
     "mpp": 0.243, "classes": "carcinoma (tumour), any normal (normal)"},
    {"name": "CAMELYON17 negative-node tiles of centres 0 and 2", "path": "camelyon17_tiles", "licence": "CC0",
     "mpp": 0.24, "classes": "any normal"},
    {"name": "PCam lymph-node hard negatives (1,600)", "path": "pcam_hard_negatives", "licence": "CC0",
     "mpp": 0.972, "classes": "any normal (centre window)"},
    {"name": "BACH WSI A03 tiles (invasive / in situ masks; unannotated = normal breast)",
     "path": "breast_he/bach_wsi_A03", "licence": "CC BY-NC-ND 4.0 (BACH / ICIAR 2018): research use only",
     "mpp": 0.467, "classes": "carcinoma (dense windows in the masks), any normal (sparse unannotated windows)"},
    {"name": "MoNuSeg TCGA-BRCA tiles (6 patients)", "path": "breast_he/monuseg",
     "licence": "CC BY-NC-SA 4.0 (MoNuSeg): research use only", "mpp": 0.25,
     "classes": "carcinoma (dense windows only)"},
    {"name": "BreCaHAD (30 images)", "path": "breast_he/brecahad", "licence": "CC BY 4.0 (Aksac et al. 2019)",
     "mpp": 0.3, "classes": "carcinoma (dense windows only)"},
    {"name": "Kather 2016 / NCT-CRC-HE colorectal tiles: TUM, LYM, STR, ADI, MUS, DEB, BACK",
     "path": "crc_tiles", "licence": "CC BY 4.0 (Kather et al. 2016, 2019)", "mpp": "0.331-0.5",
     "classes": "carcinoma, lymphoid, stroma, fat, muscle_vessel, debris_blood, background"},
]
WEIGHTS_LICENCE = ("research use only, non-commercial: trained on BACH (CC BY-NC-ND 4.0) and MoNuSeg "
                   "(CC BY-NC-SA 4.0) besides CC0 / CC BY data; the code is Apache-2.0")


def unseen_checks(detector, data_root, threshold: float = 0.5) -> dict:
    """Sources no model of this recipe trains on: the CAMELYON17 tiles of centres 1, 3, 4 and BreakHis (max over
    each image's windows, as ``score-tiles``)."""
    import csv
    from pathlib import Path

    from micromets.train import recipes
    from micromets.train.data import read_rgb

    out = {"camelyon17_unseen_tiles": recipes.unseen_tile_check(detector, data_root, threshold)}
    root = Path(data_root) / "breast_he" / "breakhis"
    rows = {}
    with open(root / "labels.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            rows[Path(row["file"]).name] = {"label": row["label"], "subtype": row["subtype"],
                                            "max_probability": round(detector.score_image(
                                                read_rgb(root / row["file"]), float(row["um_per_px_approx"])), 4)}
    out["breakhis"] = rows
    return out


def failure_modes(held_out: dict | None, unseen: dict, threshold: float = 0.5) -> list[str]:
    """Plain sentences for the card's ``known_failure_modes``, written from the measured numbers: every held-out
    normal source with >= 10 % of its windows at or above ``threshold`` (mean over seeds), every held-out
    carcinoma source whose labelled carcinoma windows are found < 80 % of the time, and the benign BreakHis
    images (benign breast epithelium, never trained as normal) scoring >= ``threshold``."""
    out = []
    for source, keys in ((held_out or {}).get("summary") or {}).items():
        kind = source.replace("_", " ")
        window = keys.get("share_windows_at_or_above", {}).get("mean")
        sens = keys.get("labelled_window_sensitivity", {}).get("mean")
        if "share_images_called_tumour" in keys and window is not None and window >= 0.10:
            out.append(f"Calls {window:.0%} of the {kind} tissue fields (48 µm) of a source it never trained on "
                       f"tumour (held out, mean of {len(held_out['seeds'])} seeds).")
        if sens is not None and sens < 0.80:
            out.append(f"Misses {1 - sens:.0%} of the annotated {kind} fields of a source it never trained on "
                       f"(held out, mean of {len(held_out['seeds'])} seeds).")
    benign = [r for r in (unseen.get("breakhis") or {}).values() if r["label"] == "benign"]
    if benign:
        high = sum(r["max_probability"] >= threshold for r in benign)
        out.append(f"Benign breast epithelium looks like carcinoma to it: {high} of {len(benign)} benign BreakHis "
                   "images (fibroadenoma, adenosis, tubular adenoma) score as tumour. Benign glands are not lymph-"
                   "node tissue and were not trained as normal; epithelial inclusions in a node need a pathologist.")
    return out


def export_tissue_model(ts: TissueSet, out_dir, data_root, *, steps: int, seed: int, width: int = 16,
                        patch_px: int = 96, input_mpp: float = 0.5, name: str = "micromets-tissue",
                        version: str = "0.3.0", command: str = "", held_out: dict | None = None,
                        fold: str | None = None, stain_jitter: tuple[float, ...] = TISSUE_STAIN_JITTER,
                        log=print) -> dict:
    """Fit on every source, export ONNX + card (classes, tumour index, data, licence, held-out report).
    ``fold``: fit without that fold's groups of FOLDS (the keep mask of :func:`run_fold`), named in the card's
    ``held_out_groups``: a model to try on tissue of those sources that it never saw."""
    from micromets.model import Detector
    from micromets.train.fit import export_onnx

    t0 = time.perf_counter()
    keep = fold_keep(ts, fold) if fold else np.ones(len(ts.windows), bool)
    model = train_tissue(ts, keep, patch_px=patch_px, steps=steps, width=width, seed=seed,
                         stain_jitter=stain_jitter, log=log)
    card = tissue_card(model, name, version, input_mpp, patch_px, width, steps, seed, int(keep.sum()), fold,
                       held_out, command, stain_jitter)
    card["training"]["wall_s"] = round(time.perf_counter() - t0, 1)
    export_onnx(model, out_dir, card, patch_px, seed)
    card["metrics"]["unseen"] = unseen_checks(Detector.load(out_dir), data_root)
    card["known_failure_modes"] = failure_modes(held_out, card["metrics"]["unseen"])
    (Path(out_dir) / "model.json").write_text(json.dumps(card, indent=2) + "\n")
    return card


def tissue_card(model, name: str, version: str, input_mpp: float, patch_px: int, width: int, steps: int, seed: int,
                n_windows: int, fold: str | None = None, held_out: dict | None = None, command: str = "",
                stain_jitter: tuple[float, ...] = TISSUE_STAIN_JITTER, mil: str | None = None) -> dict:
    """The model card of a tissue-recipe ``model`` (trained on ``n_windows`` windows; without ``fold``'s groups
    when given): classes, data and licence, recipe, held-out report."""
    import datetime as dt

    from micromets.train.fit import base_card

    card = base_card(name, version, input_mpp, patch_px, width)
    card.update({
        "classes": CLASSES, "tumour_class_index": CARCINOMA,
        "training_data": TRAINING_DATA,
        "labels": "tissue classes with partial labels and nuclear window selection (micromets.train.tissue_data)",
        "held_back": [f"crc_tiles/{name}" for name in BENCH_RESERVED],
        "split": {"unit": "group (slide / patient / tile set / source)", "held_out_folds":
                  {k: sorted(v) for k, v in FOLDS.items()}},
        "training": {"steps": steps, "batch": 64, "seed": seed, "optimizer": "AdamW one-cycle, lr 3e-3",
                     "loss": "cross-entropy; ANY_NORMAL windows: -log sum of normal-class probabilities",
                     "augmentation": f"random crop ±10 % scale, 8 dihedral, {describe(stain_jitter)}, brightness "
                                     "±8 %, contrast ±15 %, blur p 0.3",
                     "sampling": "half carcinoma, half normal windows; equal share per source within each half",
                     "normal_composites": f"{COMPOSITE_SHARE:.0%} of the normal windows: node parenchyma "
                                          f"({', '.join(PARENCHYMA)}) joined to another normal source along a "
                                          f"straight or curved boundary, or crossed by a {BAND_UM[0]:.0f}-"
                                          f"{BAND_UM[1]:.0f} µm band of it ({BAND_SHARE:.0%}; of these "
                                          f"{EDGE_SHARE:.0%} with {' or '.join(OUTSIDE)} beyond the band); "
                                          "any-normal label",
                     "hard_normals": f"mined at {MINE_AT:.0%} of the steps: the {HARD_TOP} most carcinoma-like of "
                                     f"all normal windows and {MINE_COMPOSITES} fresh composites, an equal quota "
                                     "from each normal source and from the composites, then "
                                     f"{HARD_SHARE:.0%} of the normal windows of every batch (labels kept)",
                     **({"multiple_instance": f"{mil}: {MIL_BAGS} bags per batch of {MIL_WINDOWS} windows of a "
                                              f"{', '.join(WEAK_CARCINOMA)} tile, -log mean of the top {MIL_TOP} "
                                              "carcinoma probabilities" + (" instead of their nuclear window "
                                                                           "selection" if mil == "only" else "")}
                        if mil else {}),
                     "n_windows": n_windows, "n_parameters": int(sum(p.numel() for p in model.parameters()))},
        **({"held_out_groups": sorted(FOLDS[fold]), "held_out_fold": fold} if fold else {}),
        "metrics": {"held_out": held_out} if held_out else {},
        "date": dt.date.today().isoformat(), "command": command, "licence": WEIGHTS_LICENCE,
    })
    return card
