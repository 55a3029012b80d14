"""Synthetic cytokeratin IHC slides by Beer–Lambert mixing of dye optical densities, with known truth.

Every pixel's optical density (OD) is the sum of each absorber's amount times its unit OD vector (Beer–Lambert
law, see :mod:`micromets.stain`); the transmitted light is ``I0 · 10^-OD``, then optically blurred, given sensor
noise and quantised to uint8. The absorbers:

- haematoxylin (blue): background counterstain of the stroma, dense lymphocyte nuclei (radius ≈ 3 µm on a
  jittered 8 µm grid), tumour-cell nuclei (ellipses, semi-axes 3–4.5 µm), macrophage nuclei;
- DAB (brown): cytokeratin in tumour-cell cytoplasm (per-cluster and per-cell strength), stronger at the cell
  membrane; faint non-specific background; DAB precipitate specks (radius ≤ 1.2 µm, smaller than any cell);
  an edge artefact (DAB rim, 4 µm wide, along parts of the tissue border);
- pigment decoys that are not DAB: haemosiderin (golden brown, OD vector ∝ (0.155, 0.339, 0.928), i.e. the
  colour RGB ≈ (200, 150, 60) at OD 0.6) and anthracotic carbon (neutral black, ∝ (1, 1, 1)), as granular
  clumps 16–30 µm across in macrophages;
- a tissue fold: a band where the section lies double, so every absorber's OD is ×1.9.

The slide's own H and DAB vectors are those of Ruifrok & Johnston rotated by a few degrees (stain variation),
dye strengths vary per slide, and the glass is slightly off-white — so analysis has to estimate them.

Tumour cells are packed on a jittered hexagonal lattice (12 µm spacing); a cell is the Voronoi region of its
centre within radius 7 µm. Clusters have prescribed cell counts; each truth cluster records its cell centres
(level-0 px), count, extent (max Feret of the cell centres + one cell diameter) and expected AJCC 8 class.

Tiles are rendered independently (`render_region`) from a global object list and coordinate-hashed noise, so
a slide of any size streams through :func:`micromets.phantom.pyramid.write_pyramid` with flat memory.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi
from scipy.spatial import cKDTree

from micromets.errors import MicrometsError
from micromets.rules import ajcc8
from micromets.stain import DAB_OD, HAEMATOXYLIN_OD

#: Absorber OD vectors (R, G, B), unit length.
HAEMOSIDERIN_OD = np.array([0.155, 0.339, 0.928]) / np.linalg.norm([0.155, 0.339, 0.928])
ANTHRACOTIC_OD = np.ones(3) / math.sqrt(3.0)

CELL_SPACING_UM = 12.0
CELL_RADIUS_UM = 7.0
MEMBRANE_UM = 1.0
LYMPH_GRID_UM = 8.0
BLUR_UM = 0.6  # optical blur, Gaussian σ


def _rotate_towards(v: np.ndarray, w: np.ndarray, degrees: float) -> np.ndarray:
    """Unit vector `v` turned by `degrees` in the plane of `v` and `w` (towards `w` for positive angles)."""
    v = v / np.linalg.norm(v)
    u = w - np.dot(w, v) * v
    u /= np.linalg.norm(u)
    a = math.radians(degrees)
    return math.cos(a) * v + math.sin(a) * u


def _hash01(ix: np.ndarray, iy: np.ndarray, seed: int, salt: int) -> np.ndarray:
    """Deterministic uniform [0, 1) numbers from integer coordinates (splitmix64-style mixing)."""
    with np.errstate(over="ignore"):
        h = (np.asarray(ix, np.int64).astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
             ^ np.asarray(iy, np.int64).astype(np.uint64) * np.uint64(0xC2B2AE3D27D4EB4F)
             ^ np.uint64((seed * 0x165667B19E3779F9 + salt * 0x27D4EB2F165667C5) & 0xFFFFFFFFFFFFFFFF))
        h ^= h >> np.uint64(30)
        h *= np.uint64(0xBF58476D1CE4E5B9)
        h ^= h >> np.uint64(27)
        h *= np.uint64(0x94D049BB133111EB)
        h ^= h >> np.uint64(31)
    return (h >> np.uint64(11)).astype(np.float64) / float(1 << 53)


@dataclass
class IhcPhantom:
    """A synthetic IHC slide: geometry, absorbers and truth. Render pixels with `render_region`."""

    l0_width: int
    l0_height: int
    l0_mpp: float
    seed: int
    h_vector: np.ndarray
    dab_vector: np.ndarray
    background_rgb: np.ndarray
    h_strength: float
    dab_strength: float
    tissue_centre_um: tuple[float, float]
    tissue_radii_um: tuple[float, float]
    cells_um: np.ndarray            # (N, 2) tumour-cell centres in µm
    cell_dab: np.ndarray            # (N,) cytoplasm DAB OD
    cell_nucleus: np.ndarray        # (N, 5) nucleus dx, dy (µm), semi-axes a, b (µm), angle (rad)
    cell_cluster: np.ndarray        # (N,) index into clusters
    granules_um: np.ndarray         # (M, 2) pigment granule / speck centres in µm
    granule_r_um: np.ndarray        # (M,)
    granule_od: np.ndarray          # (M,) OD amplitude
    granule_kind: np.ndarray        # (M,) 0 haemosiderin, 1 anthracotic, 2 DAB speck
    macrophages_um: np.ndarray      # (K, 3) macrophage nucleus x, y, radius (µm)
    fold: tuple[float, float, float, float]  # line through (x, y) µm with direction angle (rad), half-width µm
    rim_sectors: list[tuple[float, float]]     # angular sectors (rad) of the tissue border with a DAB rim
    clusters: list[dict] = field(default_factory=list)
    decoys: list[dict] = field(default_factory=list)

    # ---------------------------------------------------------------- geometry
    def _tissue_rho(self, x_um: np.ndarray, y_um: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Normalised radius (1 = tissue border, wobbly) and polar angle of points."""
        cx, cy = self.tissue_centre_um
        rx, ry = self.tissue_radii_um
        dx, dy = (x_um - cx) / rx, (y_um - cy) / ry
        theta = np.arctan2(dy, dx)
        wobble = 1.0 + 0.05 * np.sin(3 * theta + self.seed) + 0.03 * np.cos(5 * theta + 2 * self.seed)
        return np.hypot(dx, dy) / wobble, theta

    def inside_tissue(self, x_um: np.ndarray, y_um: np.ndarray, margin_um: float = 0.0) -> np.ndarray:
        rho, _ = self._tissue_rho(np.asarray(x_um, float), np.asarray(y_um, float))
        return rho < 1.0 - margin_um / min(self.tissue_radii_um)

    # ---------------------------------------------------------------- rendering
    def render_region(self, l0_x: int, l0_y: int, l0_w: int, l0_h: int) -> np.ndarray:
        """(l0_h, l0_w, 3) uint8 RGB of the level-0 rectangle; identical wherever the same pixel is rendered."""
        mpp = self.l0_mpp
        sigma_px = BLUR_UM / mpp
        pad = math.ceil(4.0 * sigma_px) + 2  # beyond the Gaussian's truncation radius (4 σ)
        x0, y0, w, h = l0_x - pad, l0_y - pad, l0_w + 2 * pad, l0_h + 2 * pad
        xs = ((x0 + np.arange(w) + 0.5) * mpp).astype(np.float32)
        ys = ((y0 + np.arange(h) + 0.5) * mpp).astype(np.float32)
        X, Y = np.meshgrid(xs, ys)
        rho, theta = self._tissue_rho(X, Y)
        tissue = rho < 1.0
        dist_edge_um = (1.0 - rho) * min(self.tissue_radii_um)

        # background counterstain and non-specific DAB, with slow (separable) variation
        slow = 0.5 + 0.5 * np.outer(np.cos(ys / 131.0), np.sin(xs / 97.0 + self.seed))
        amount_h = (0.07 + 0.04 * slow).astype(np.float32)
        amount_d = (0.025 + 0.015 * slow).astype(np.float32)
        amount_hem = np.zeros((h, w), np.float32)
        amount_black = np.zeros((h, w), np.float32)

        self._render_tumour(X, Y, xs, ys, amount_h, amount_d)
        lx, ly, lr, la = self._lymphocytes(xs, ys)
        if len(self.cells_um) and len(lx):
            d, _ = cKDTree(self.cells_um).query(np.column_stack([lx, ly]), distance_upper_bound=CELL_RADIUS_UM + 2)
            keep = ~np.isfinite(d)
            lx, ly, lr, la = lx[keep], ly[keep], lr[keep], la[keep]
        lymph = np.zeros((h, w), np.float32)
        _stamp_discs(lymph, xs, ys, lx, ly, lr, la, soft_um=0.8)
        amount_h += lymph
        if len(self.macrophages_um):
            m = self.macrophages_um
            mac = np.zeros((h, w), np.float32)
            _stamp_discs(mac, xs, ys, m[:, 0], m[:, 1], m[:, 2], np.full(len(m), 0.35), soft_um=0.8)
            amount_h += mac
        targets = (amount_hem, amount_black, amount_d)
        for kind, target in enumerate(targets):
            sel = self.granule_kind == kind
            _stamp_discs(target, xs, ys, self.granules_um[sel, 0], self.granules_um[sel, 1],
                         self.granule_r_um[sel], self.granule_od[sel], soft_um=0.5)

        # DAB rim artefact along parts of the tissue border
        near_edge = dist_edge_um < 4.0
        if near_edge.any():
            in_sector = np.zeros_like(tissue)
            for a0, a1 in self.rim_sectors:
                in_sector |= (theta >= a0) & (theta < a1)
            amount_d += np.float32(0.45) * (in_sector & near_edge)

        # tissue fold: the section lies double
        fx, fy, fa, fhw = self.fold
        fold_d = np.abs(-(X - fx) * math.sin(fa) + (Y - fy) * math.cos(fa))
        layers = np.where(fold_d < fhw, np.float32(1.9), np.float32(1.0)) * tissue

        od = np.empty((h, w, 3), np.float32)
        hv = (self.h_strength * self.h_vector).astype(np.float32)
        dv = (self.dab_strength * self.dab_vector).astype(np.float32)
        for ch in range(3):
            od[..., ch] = layers * (amount_h * hv[ch] + amount_d * dv[ch]
                                    + amount_hem * np.float32(HAEMOSIDERIN_OD[ch])
                                    + amount_black * np.float32(ANTHRACOTIC_OD[ch]))
        light = self.background_rgb.astype(np.float32) * np.power(np.float32(10.0), -od)
        light = ndi.gaussian_filter(light, sigma=(sigma_px, sigma_px, 0), mode="nearest")
        light = light[pad:pad + l0_h, pad:pad + l0_w]
        iy, ix = np.mgrid[l0_y:l0_y + l0_h, l0_x:l0_x + l0_w]
        u = _hash01(ix, iy, self.seed, 11)
        noise = (u + (u * 4096.0) % 1.0 - 1.0).astype(np.float32)  # triangular, variance 1/6
        light += (6.0 * noise)[..., None]
        return np.clip(np.rint(light), 0, 255).astype(np.uint8)

    def _lymphocytes(self, xs, ys) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Lymphocyte nuclei near the region: centres x, y, radius (µm) and OD amplitude, from a hashed grid."""
        g = LYMPH_GRID_UM
        gi, gj = np.mgrid[int(math.floor(ys[0] / g)) - 1:int(math.floor(ys[-1] / g)) + 2,
                          int(math.floor(xs[0] / g)) - 1:int(math.floor(xs[-1] / g)) + 2]
        gi, gj = gi.ravel(), gj.ravel()
        keep = _hash01(gj, gi, self.seed, 3) < 0.85
        gi, gj = gi[keep], gj[keep]
        cy = (gi + 0.15 + 0.7 * _hash01(gj, gi, self.seed, 1)) * g
        cx = (gj + 0.15 + 0.7 * _hash01(gj, gi, self.seed, 2)) * g
        radius = 2.8 + 0.6 * _hash01(gj, gi, self.seed, 4)
        amp = 0.55 + 0.25 * _hash01(gj, gi, self.seed, 5)
        return cx, cy, radius, amp

    def _render_tumour(self, X, Y, xs, ys, amount_h, amount_d) -> None:
        """Add tumour cells (Voronoi regions of their centres within the cell radius) to the dye amounts."""
        if len(self.cells_um) == 0:
            return
        reach = CELL_RADIUS_UM + 2.0
        sel = ((self.cells_um[:, 0] > xs[0] - reach) & (self.cells_um[:, 0] < xs[-1] + reach)
               & (self.cells_um[:, 1] > ys[0] - reach) & (self.cells_um[:, 1] < ys[-1] + reach))
        idx = np.flatnonzero(sel)
        if len(idx) == 0:
            return
        for cluster in np.unique(self.cell_cluster[idx]):
            self._render_cells(X, Y, xs, ys, idx[self.cell_cluster[idx] == cluster], amount_h, amount_d)

    def _render_cells(self, X, Y, xs, ys, idx, amount_h, amount_d) -> None:
        reach = CELL_RADIUS_UM + 2.0
        pts = self.cells_um[idx]
        step = xs[1] - xs[0] if len(xs) > 1 else self.l0_mpp
        c0 = max(0, int((pts[:, 0].min() - reach - xs[0]) / step))
        c1 = min(len(xs), int((pts[:, 0].max() + reach - xs[0]) / step) + 2)
        r0 = max(0, int((pts[:, 1].min() - reach - ys[0]) / step))
        r1 = min(len(ys), int((pts[:, 1].max() + reach - ys[0]) / step) + 2)
        sx, sy = X[r0:r1, c0:c1], Y[r0:r1, c0:c1]
        d, nn = cKDTree(pts).query(np.column_stack([sx.ravel(), sy.ravel()]), k=2, distance_upper_bound=reach)
        d1 = d[:, 0].reshape(sx.shape)
        d2 = d[:, 1].reshape(sx.shape)
        near = np.isfinite(d1)
        owner = np.where(near, nn[:, 0].reshape(sx.shape), 0)
        g = idx[owner]
        in_cell = near & (d1 < CELL_RADIUS_UM)
        with np.errstate(invalid="ignore"):
            membrane = in_cell & (((d2 - d1) < 2 * MEMBRANE_UM) | (d1 > CELL_RADIUS_UM - MEMBRANE_UM))
        dab = self.cell_dab[g]
        ndx, ndy, na, nb, nang = (self.cell_nucleus[g, i] for i in range(5))
        ux = sx - (self.cells_um[g, 0] + ndx)
        uy = sy - (self.cells_um[g, 1] + ndy)
        cos, sin = np.cos(nang), np.sin(nang)
        q = np.hypot((ux * cos + uy * sin) / na, (-ux * sin + uy * cos) / nb)
        nucleus = in_cell & (q < 1.0)
        nucleus_soft = np.clip((1.0 - q) / 0.15 + 0.5, 0.0, 1.0) * in_cell
        sub_d = amount_d[r0:r1, c0:c1]
        sub_h = amount_h[r0:r1, c0:c1]
        cytoplasm = dab * np.where(nucleus, 0.15, 1.0) + membrane * 0.35 * dab / 0.6   # membrane ≈ 1.6× cytoplasm
        sub_d += np.where(in_cell, cytoplasm, 0.0).astype(np.float32)
        sub_h += (0.42 * nucleus_soft + 0.03 * in_cell).astype(np.float32)

    # ---------------------------------------------------------------- truth
    def truth(self) -> dict:
        """Ground truth as JSON-ready dict (cell centres and outlines in level-0 px)."""
        s = 1.0 / self.l0_mpp
        return {
            "schema": "micromets.ihc-phantom-truth/1",
            "l0_width": self.l0_width, "l0_height": self.l0_height, "l0_mpp": self.l0_mpp, "seed": self.seed,
            "node_class": self.node_class(),
            "clusters": [{"kind": c["kind"], "n_cells": c["n_cells"], "extent_mm": c["extent_mm"],
                          "expected_class": c["expected_class"],
                          "centre_l0": [c["centre_um"][0] * s, c["centre_um"][1] * s],
                          "cells_l0": (np.asarray(self.cells_um[self.cell_cluster == i]) * s).round(1).tolist()}
                         for i, c in enumerate(self.clusters)],
            "decoys": [{"kind": d["kind"], "centre_l0": [d["centre_um"][0] * s, d["centre_um"][1] * s],
                        "radius_um": d["radius_um"]} for d in self.decoys],
        }

    def node_class(self) -> str:
        order = ["negative", "itc", "micro", "macro"]
        return max((c["expected_class"] for c in self.clusters), key=order.index, default="negative")


def _stamp_discs(out: np.ndarray, xs: np.ndarray, ys: np.ndarray, cx: np.ndarray, cy: np.ndarray,
                 radius: np.ndarray, amp: np.ndarray, soft_um: float) -> None:
    """Draw soft-edged discs (µm centres, radii) into `out` (rows at `ys`, columns at `xs` µm) by maximum."""
    if len(cx) == 0:
        return
    step = float(xs[1] - xs[0]) if len(xs) > 1 else 1.0
    reach = radius + soft_um
    sel = (cx + reach > xs[0]) & (cx - reach < xs[-1]) & (cy + reach > ys[0]) & (cy - reach < ys[-1])
    cx, cy, radius, amp = cx[sel], cy[sel], radius[sel], amp[sel]
    if len(cx) == 0:
        return
    size = int(math.ceil(2 * (radius.max() + soft_um) / step)) + 2
    c0 = np.floor((cx - radius - soft_um - xs[0]) / step).astype(np.int64)
    r0 = np.floor((cy - radius - soft_um - ys[0]) / step).astype(np.int64)
    off = np.arange(size)
    cols = c0[:, None] + off[None, :]                               # (n, size)
    rows = r0[:, None] + off[None, :]
    px = xs[0] + cols * step
    py = ys[0] + rows * step
    d = np.hypot(px[:, None, :] - cx[:, None, None], py[:, :, None] - cy[:, None, None])  # (n, size, size)
    val = (amp[:, None, None] * np.clip((radius[:, None, None] - d) / (2 * soft_um) + 0.5, 0, 1)).astype(out.dtype)
    rr = np.broadcast_to(rows[:, :, None], val.shape)
    cc = np.broadcast_to(cols[:, None, :], val.shape)
    ok = (val > 0) & (rr >= 0) & (rr < out.shape[0]) & (cc >= 0) & (cc < out.shape[1])
    np.maximum.at(out, (rr[ok], cc[ok]), val[ok])


def _cluster_cells(n: int, rng: np.random.Generator) -> np.ndarray:
    """`n` cell centres (µm, relative to the cluster centre) on a jittered hexagonal lattice, irregular outline."""
    s = CELL_SPACING_UM
    k = int(math.ceil(math.sqrt(n) * 1.6)) + 2
    i, j = np.mgrid[-k:k + 1, -k:k + 1]
    x = (j + 0.5 * (i % 2)) * s
    y = i * s * math.sqrt(3) / 2
    pts = np.column_stack([x.ravel(), y.ravel()])
    ang = np.arctan2(pts[:, 1], pts[:, 0])
    phase = rng.uniform(0, 2 * math.pi, 2)
    shape = 1.0 + 0.12 * np.sin(2 * ang + phase[0]) + 0.06 * np.sin(3 * ang + phase[1])
    order = np.argsort(np.hypot(pts[:, 0], pts[:, 1]) / shape)
    pts = pts[order[:n]]
    return pts + rng.uniform(-1.2, 1.2, pts.shape)


def _extent_mm(cells_um: np.ndarray) -> float:
    """Max distance between cell centres plus one cell diameter (mm)."""
    if len(cells_um) < 2:
        return 2 * CELL_RADIUS_UM / 1000
    from scipy.spatial.distance import pdist
    hull_pts = cells_um
    if len(cells_um) > 3:
        from scipy.spatial import ConvexHull
        hull_pts = cells_um[ConvexHull(cells_um).vertices]
    return float((pdist(hull_pts).max() + 2 * CELL_RADIUS_UM) / 1000)


def make_ihc_phantom(
    seed: int = 0,
    size_mm: tuple[float, float] = (2.0, 2.0),
    l0_mpp: float = 0.5,
    itc_sizes: tuple[int, ...] = (5, 12, 30, 60, 100, 150),
    micro_sizes: tuple[int, ...] = (),
    n_haemosiderin: int = 6,
    n_anthracotic: int = 6,
    speck_per_mm2: float = 60.0,
    min_separation_um: float = 250.0,
) -> IhcPhantom:
    """A phantom IHC slide of `size_mm` (width, height) at `l0_mpp` µm/px with the given clusters and decoys.

    `itc_sizes` / `micro_sizes` are cell counts of tumour clusters; each cluster's expected class is
    :func:`micromets.rules.ajcc8.node_class` of its extent and cell count (150 cells stay ≤ 0.2 mm: ITC).
    Clusters and decoys are placed inside the tissue, at least
    `min_separation_um` apart (more than the 75 µm lesion-grouping gap) and 80 µm inside the tissue border.
    """
    if any(n < 1 for n in itc_sizes + micro_sizes):
        raise MicrometsError(f"cluster cell counts must be >= 1, got {itc_sizes + micro_sizes}")
    rng = np.random.default_rng(seed)
    w_um, h_um = size_mm[0] * 1000, size_mm[1] * 1000
    phantom = IhcPhantom(
        l0_width=int(round(w_um / l0_mpp)), l0_height=int(round(h_um / l0_mpp)), l0_mpp=l0_mpp, seed=seed,
        h_vector=_rotate_towards(HAEMATOXYLIN_OD, np.array([0.0, 1.0, 0.0]), rng.uniform(-4, 4)),
        dab_vector=_rotate_towards(DAB_OD, np.array([0.0, 0.0, 1.0]), rng.uniform(-4, 4)),
        background_rgb=np.array([243, 242, 246]) + rng.integers(-4, 5, 3),
        h_strength=float(rng.uniform(0.85, 1.15)), dab_strength=float(rng.uniform(0.8, 1.2)),
        tissue_centre_um=(w_um / 2, h_um / 2), tissue_radii_um=(0.44 * w_um, 0.42 * h_um),
        cells_um=np.zeros((0, 2)), cell_dab=np.zeros(0), cell_nucleus=np.zeros((0, 5)),
        cell_cluster=np.zeros(0, np.int64), granules_um=np.zeros((0, 2)), granule_r_um=np.zeros(0),
        granule_od=np.zeros(0), granule_kind=np.zeros(0, np.int64), macrophages_um=np.zeros((0, 3)),
        fold=(w_um * 0.5, h_um * 0.5, float(rng.uniform(0, math.pi)), 40.0),
        rim_sectors=[(a, a + 0.9) for a in rng.uniform(-math.pi, math.pi - 0.9, 2)],
    )
    # one placement pass for clusters then decoys, rejection-sampled inside tissue and apart
    objects = [("itc", n) for n in itc_sizes] + [("micro", n) for n in micro_sizes]
    objects += [("haemosiderin", 0)] * n_haemosiderin + [("anthracotic", 0)] * n_anthracotic
    fold_x, fold_y, fold_a, fold_hw = phantom.fold
    placed: list[np.ndarray] = []
    radii: list[float] = []
    cells, dab, nuc, owner = [], [], [], []
    gran, gran_r, gran_od, gran_kind, macro = [], [], [], [], []
    for kind, n in sorted(objects, key=lambda o: -o[1]):
        rel = _cluster_cells(n, rng) if n else None
        radius = (np.hypot(rel[:, 0], rel[:, 1]).max() + CELL_RADIUS_UM) if n else 15.0
        for _ in range(10_000):
            c = rng.uniform([0, 0], [w_um, h_um])
            fold_dist = abs(-(c[0] - fold_x) * math.sin(fold_a) + (c[1] - fold_y) * math.cos(fold_a))
            if not phantom.inside_tissue(c[0], c[1], margin_um=radius + 80):
                continue
            if fold_dist < fold_hw + radius + 20:
                continue
            if all(np.hypot(*(c - p)) > r + radius + min_separation_um for p, r in zip(placed, radii)):
                break
        else:
            raise MicrometsError(f"phantom of {size_mm} mm too small to place {len(objects)} objects apart")
        placed.append(c)
        radii.append(radius)
        if n:
            pts = rel + c
            index = len(phantom.clusters)
            strength = rng.uniform(0.35, 0.75)
            cells.append(pts)
            dab.append(np.clip(strength * rng.uniform(0.8, 1.2, n), 0.2, None))
            nuc.append(np.column_stack([rng.uniform(-1, 1, (n, 2)), rng.uniform(3.6, 4.5, n),
                                        rng.uniform(2.9, 3.6, n), rng.uniform(0, math.pi, n)]))
            owner.append(np.full(n, index))
            extent = _extent_mm(pts)
            expected = ajcc8.node_class(extent, n)
            phantom.clusters.append({"kind": kind, "n_cells": n, "centre_um": (float(c[0]), float(c[1])),
                                     "extent_mm": round(extent, 4), "expected_class": expected})
        else:
            k = 0 if kind == "haemosiderin" else 1
            n_gran = int(rng.integers(40, 90))
            rr = radius * np.sqrt(rng.uniform(0, 1, n_gran))
            aa = rng.uniform(0, 2 * math.pi, n_gran)
            gran.append(c + np.column_stack([rr * np.cos(aa), rr * np.sin(aa)]))
            gran_r.append(rng.uniform(0.6, 1.6, n_gran))
            gran_od.append(rng.uniform(0.6, 1.4, n_gran) if k == 0 else rng.uniform(0.9, 1.8, n_gran))
            gran_kind.append(np.full(n_gran, k))
            macro.append([c[0] + rng.uniform(-4, 4), c[1] + rng.uniform(-4, 4), 4.0])
            phantom.decoys.append({"kind": kind, "centre_um": (float(c[0]), float(c[1])), "radius_um": radius})
    # DAB precipitate specks over the tissue: smaller than any cell
    n_specks = rng.poisson(speck_per_mm2 * math.pi * phantom.tissue_radii_um[0] * phantom.tissue_radii_um[1] / 1e6)
    sp = rng.uniform([0, 0], [w_um, h_um], (n_specks, 2))
    sp = sp[phantom.inside_tissue(sp[:, 0], sp[:, 1], margin_um=20)]
    gran += [sp]
    gran_r += [rng.uniform(0.5, 1.2, len(sp))]
    gran_od += [rng.uniform(0.5, 1.0, len(sp))]
    gran_kind += [np.full(len(sp), 2)]
    if cells:
        phantom.cells_um = np.concatenate(cells)
        phantom.cell_dab = np.concatenate(dab)
        phantom.cell_nucleus = np.concatenate(nuc)
        phantom.cell_cluster = np.concatenate(owner)
    phantom.granules_um = np.concatenate(gran)
    phantom.granule_r_um = np.concatenate(gran_r)
    phantom.granule_od = np.concatenate(gran_od)
    phantom.granule_kind = np.concatenate(gran_kind)
    phantom.macrophages_um = np.asarray(macro, float).reshape(-1, 3)
    return phantom


def write_ihc_phantom(path: str | Path, phantom: IhcPhantom) -> Path:
    """Write `phantom` as a pyramidal TIFF (`path`) and its truth beside it (`<stem>.truth.json`)."""
    from micromets.phantom.pyramid import write_pyramid

    path = Path(path)
    write_pyramid(path, phantom.l0_width, phantom.l0_height, phantom.l0_mpp, phantom.render_region,
                  description="micromets IHC phantom")
    truth_path = path.with_name(path.stem + ".truth.json")
    truth_path.write_text(json.dumps(phantom.truth()))
    return truth_path


def score_ihc(truth: dict, clusters: list[dict], cells_l0: np.ndarray, l0_mpp: float) -> dict:
    """Compare IHC findings (`micromets.ihc.IhcFindings` clusters and cells) with a phantom's truth.

    A truth cluster is found when a detected cluster outline contains at least one of its cell centres; its
    counted cells are those of the detected clusters that do. A detected cluster that contains no truth cell is
    false. The node class is that of the measured lesions (:func:`micromets.measure.measure_lesions`, 75 µm
    grouping, Feret diameter) under :func:`micromets.rules.ajcc8.node_class` with the cells inside each lesion.
    """
    import shapely

    from micromets.measure import measure_lesions

    polygons = [c["geometry_l0"] for c in clusters]
    hit_any = np.zeros(len(polygons), bool)
    rows = []
    for cluster in truth["clusters"]:
        cells = np.asarray(cluster["cells_l0"], float)
        hits = [i for i, p in enumerate(polygons) if shapely.contains_xy(p, cells[:, 0], cells[:, 1]).any()]
        hit_any[hits] = True
        n_found = int(sum(clusters[i]["n_cells"] for i in hits))
        rows.append({"kind": cluster["kind"], "n_cells": cluster["n_cells"], "found": bool(hits),
                     "n_found": n_found, "count_error": (n_found - cluster["n_cells"]) / cluster["n_cells"]})
    lesions = measure_lesions(polygons, l0_mpp) if polygons else []
    cells_l0 = np.asarray(cells_l0, float).reshape(-1, 2)
    classes = [ajcc8.node_class(m.diameter_mm, int(shapely.contains_xy(m.geometry_l0, *cells_l0.T).sum())
                                if len(cells_l0) else 0) for m in lesions]
    order = ["negative", "itc", "micro", "macro"]
    node_class = max(classes, key=order.index, default="negative")
    return {"clusters": rows, "false_clusters": int((~hit_any).sum()), "node_class": node_class,
            "expected_node_class": truth["node_class"]}


def benchmark_ihc(out_dir: str | Path, seeds: tuple[int, ...] = (0, 1, 2, 3), size_mm: float = 1.6,
                  work_mpp: float = 1.0) -> dict:
    """Write phantom IHC slides with known truth, analyse them, and summarise the accuracy and speed.

    Per seed three slides of `size_mm` × `size_mm` at 0.5 µm/px: `itc` (ITC clusters of 5–150 cells and pigment
    decoys), `micro` (a 400-cell micrometastasis, ITC clusters, decoys) and `negative` (pigment decoys, specks,
    edge rim and fold only). Returns cell-count error, cluster sensitivity by class, false clusters per slide,
    node-class accuracy, false-positive nodes among the negative slides, and analysis speed (mm² of tissue per
    second), with per-slide rows.
    """
    import time

    from micromets.ihc import analyze_ihc
    from micromets.slide import open_slide
    from micromets.stain import detect_stain
    from micromets.tissue import tissue_mask

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    designs = {
        "itc": dict(itc_sizes=(5, 8, 12, 20, 35, 60, 100, 150), n_haemosiderin=3, n_anthracotic=3),
        "micro": dict(itc_sizes=(5, 30, 150), micro_sizes=(400,), n_haemosiderin=3, n_anthracotic=3),
        "negative": dict(itc_sizes=(), n_haemosiderin=5, n_anthracotic=5),
    }
    slides = []
    for seed in seeds:
        for kind, design in designs.items():
            phantom = make_ihc_phantom(seed=seed, size_mm=(size_mm, size_mm), min_separation_um=150, **design)
            path = out_dir / f"ihc_{kind}_{seed}.tiff"
            write_ihc_phantom(path, phantom)
            with open_slide(path) as slide:
                tissue = tissue_mask(slide)
                stain_kind, _ = detect_stain(tissue.rgb, tissue.mask)
                start = time.perf_counter()
                cpu = time.process_time()
                found = analyze_ihc(slide, tissue, work_mpp=work_mpp)
                wall_s, cpu_s = time.perf_counter() - start, time.process_time() - cpu
                area_mm2 = float(np.pi * np.prod(phantom.tissue_radii_um)) / 1e6
                row = score_ihc(phantom.truth(), found.clusters, found.cells_l0, slide.l0_mpp)
            row.update(slide=path.name, design=kind, detected_stain=stain_kind, tissue_mm2=round(area_mm2, 3),
                       wall_s=round(wall_s, 2), cpu_s=round(cpu_s, 2), rejected=found.rejected,
                       stain_note=found.stain_note)
            slides.append(row)
    clusters = [c for s in slides for c in s["clusters"]]
    errors = np.array([c["count_error"] for c in clusters if c["found"]])
    summary = {
        "n_slides": len(slides),
        "cell_count_error_median_abs": round(float(np.median(np.abs(errors))), 4) if len(errors) else None,
        "cell_count_error_max_abs": round(float(np.max(np.abs(errors))), 4) if len(errors) else None,
        "sensitivity": {kind: round(float(np.mean([c["found"] for c in clusters if c["kind"] == kind])), 4)
                        for kind in sorted({c["kind"] for c in clusters})},
        "itc_clusters_missed": [c["n_cells"] for c in clusters if c["kind"] == "itc" and not c["found"]],
        "false_clusters_per_slide": round(float(np.mean([s["false_clusters"] for s in slides])), 3),
        "node_class_accuracy": round(float(np.mean([s["node_class"] == s["expected_node_class"] for s in slides])), 4),
        "false_positive_nodes": int(sum(s["node_class"] != "negative" for s in slides if s["design"] == "negative")),
        "stain_detected_ihc": int(sum(s["detected_stain"] == "ihc" for s in slides)),
        "mm2_per_s_wall": round(sum(s["tissue_mm2"] for s in slides) / sum(s["wall_s"] for s in slides), 3),
        "mm2_per_cpu_s": round(sum(s["tissue_mm2"] for s in slides) / sum(s["cpu_s"] for s in slides), 3),
    }
    return {"summary": summary, "slides": slides}
