"""Geometry of a phantom slide, in level-0 pixels: node outline, capsule, perinodal fat and lesions.

A phantom node is a smooth lobulated ellipse filling most of the slide, lined by a fibrous capsule
(`CAPSULE_UM` thick), with a crescent of perinodal fat on one side and glass around it. With `stroma=True` the
node also holds what every real node has besides lymphoid cortex: `N_TRABECULAE` fibrous trabeculae running from
the capsule towards the hilum (`TRABECULA_UM` wide) and stroma islands (one per mm² of node, 80-200 µm), drawn
with the capsule's texture (the cortex excludes them). Lesions are placed inside the node, away from the
capsule, at least `LESION_SEPARATION_UM` apart (edge to edge) so that no two of
them fall within the 75 µm grouping distance of CAMELYON16 evaluation or merge in a detector's heatmap; the
trabeculae and islands are drawn after them and stop `LESION_MARGIN_UM` short of every lesion (a deposit displaces
the stroma it grows into), so the same seed places the same lesions with or without stroma.

Every lesion shape is scaled so that its maximum Feret diameter (the largest distance between two points of the
outline, the AJCC "greatest dimension") equals the prescribed diameter exactly; for a polygon that is the largest
distance between two of its vertices.

Lesion size classes (AJCC 8 breast, Amin et al. 2017, as used by CAMELYON17): ITC <= 0.2 mm, micrometastasis
> 0.2 mm and <= 2.0 mm, macrometastasis > 2.0 mm. Diameters drawn at random stay clear of the class boundaries
(`DIAMETER_RANGES_MM`) so the expected class never hinges on a rounding; a diameter given explicitly is used as is.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import shapely
import shapely.affinity
from shapely.geometry import Polygon

from micromets.errors import MicrometsError
from micromets.measure import hull_vertices, max_feret
from micromets.rules import ajcc8, camelyon17

CAPSULE_UM = 30.0
LESION_MARGIN_UM = 60.0  # lesion edge to capsule, at least
LESION_SEPARATION_UM = 200.0  # lesion edge to lesion edge, at least (> 75 µm grouping + 2 heatmap cells)
DIAMETER_RANGES_MM = {"itc": (0.06, 0.18), "micro": (0.3, 1.8), "macro": (2.2, 3.0)}
SHAPES = ("blob", "disc", "camelyon16")
N_TRABECULAE = 3
TRABECULA_UM = 40.0
ISLAND_UM = (80.0, 200.0)
_N_VERTICES = 256


@dataclass(frozen=True)
class LesionSpec:
    """One lesion to place: its size class and, optionally, its exact maximum Feret diameter in mm."""

    size_class: str
    diameter_mm: float | None = None


@dataclass(frozen=True)
class Lesion:
    """A placed lesion: outline in level-0 px and its maximum Feret diameter (mm)."""

    lesion_id: int
    size_class: str
    diameter_mm: float
    shape: str
    outline_l0: Polygon


@dataclass(frozen=True)
class Layout:
    """Everything drawn on a phantom, in level-0 px."""

    l0_width: int
    l0_height: int
    l0_mpp: float
    node_l0: Polygon
    cortex_l0: Polygon  # node minus capsule (and minus trabeculae and stroma islands when drawn)
    fat_l0: Polygon  # perinodal fat (outside the node)
    lesions: tuple[Lesion, ...]


def parse_lesions(text: str) -> list[LesionSpec]:
    """Parse `itc:N,micro:N,macro:N` or `none`; `class:N@D` fixes the diameter of those N lesions to D mm.

    >>> parse_lesions("itc:2,micro:1@0.8")
    [LesionSpec(size_class='itc', diameter_mm=None), LesionSpec(size_class='itc', diameter_mm=None), \
LesionSpec(size_class='micro', diameter_mm=0.8)]
    """
    text = text.strip().lower()
    if text == "none":
        return []
    specs: list[LesionSpec] = []
    for item in text.split(","):
        match = re.fullmatch(r"\s*(itc|micro|macro)\s*:\s*(\d+)\s*(?:@\s*([0-9.]+))?\s*", item)
        if not match:
            raise MicrometsError(
                f"bad --lesions item {item!r}: expected itc:N, micro:N or macro:N (optionally @DIAMETER_MM), or none"
            )
        size_class, count, diameter = match.group(1), int(match.group(2)), match.group(3)
        diameter_mm = float(diameter) if diameter else None
        if diameter_mm is not None and {ajcc8.node_class(diameter_mm), camelyon17.node_class(diameter_mm)} != {
            size_class
        }:
            raise MicrometsError(
                f"--lesions {item!r}: {diameter_mm} mm is not unambiguously {size_class} "
                "(AJCC 8: ITC <= 0.2 mm < micro <= 2.0 mm < macro; CAMELYON17 puts 0.2 and 2.0 in the larger class)"
            )
        specs += [LesionSpec(size_class, diameter_mm)] * count
    return specs


def _feret_px(polygon: Polygon) -> float:
    """Exact maximum Feret diameter of a polygon in its own units (`micromets.measure.max_feret` of its hull)."""
    return max_feret(hull_vertices(polygon))[0]


def _lobulated(rng: np.random.Generator, roughness: float) -> np.ndarray:
    """Unit star-shaped outline r(θ) = 1 + Σ_k a_k cos(kθ + φ_k), k = 2..6, as (N, 2) points."""
    theta = np.linspace(0.0, 2 * np.pi, _N_VERTICES, endpoint=False)
    k = np.arange(2, 7)[:, None]
    amp = rng.uniform(0, roughness, size=(5, 1)) / k
    radius = 1.0 + (amp * np.cos(k * theta + rng.uniform(0, 2 * np.pi, size=(5, 1)))).sum(axis=0)
    return np.column_stack([radius * np.cos(theta), radius * np.sin(theta)])


def load_outlines(folder: str | Path) -> list[np.ndarray]:
    """Tumour outlines of CAMELYON16 polygon JSON files (`{"positive": [{"vertices": [[x, y], ...]}]}`)."""
    outlines = []
    for path in sorted(Path(folder).glob("*.json")):
        for item in json.loads(path.read_text()).get("positive", []):
            vertices = np.asarray(item.get("vertices", []), dtype=float)
            if len(vertices) >= 8 and shapely.is_valid(Polygon(vertices)):
                outlines.append(vertices)
    if not outlines:
        raise MicrometsError(f"no usable CAMELYON16 tumour polygons (*.json with 'positive') in {folder}")
    return outlines


def lesion_outline(
    shape: str, diameter_px: float, rng: np.random.Generator, outlines: list[np.ndarray] | None = None
) -> Polygon:
    """A lesion outline centred on (0, 0) whose maximum Feret diameter is exactly `diameter_px`."""
    if shape == "disc":
        theta = np.linspace(0.0, 2 * np.pi, _N_VERTICES, endpoint=False)  # even count: opposite vertices exist
        points = np.column_stack([np.cos(theta), np.sin(theta)])
    elif shape == "blob":
        points = _lobulated(rng, 0.35) * [1.0, rng.uniform(0.6, 1.0)]
    elif shape == "camelyon16":
        if not outlines:
            raise MicrometsError("lesion shape camelyon16 needs a folder of CAMELYON16 polygons (--polygons)")
        points = outlines[int(rng.integers(len(outlines)))]
        angle = rng.uniform(0, 2 * np.pi)
        rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        points = (points - points.mean(axis=0)) @ rot.T
    else:
        raise MicrometsError(f"unknown lesion shape {shape!r}: choose one of {', '.join(SHAPES)}")
    polygon = Polygon(points)
    scale = diameter_px / _feret_px(polygon)
    centre = polygon.centroid
    return shapely.affinity.scale(
        shapely.affinity.translate(polygon, -centre.x, -centre.y), scale, scale, origin=(0, 0)
    )


def make_layout(
    size_mm: tuple[float, float],
    l0_mpp: float,
    lesions: list[LesionSpec],
    seed: int,
    shape: str = "blob",
    outlines: list[np.ndarray] | None = None,
    stroma: bool = False,
) -> Layout:
    """Draw node, capsule, fat and lesions of a `size_mm` (width, height) slide at `l0_mpp` µm/px from `seed`;
    with `stroma`, trabeculae and stroma islands too (module docstring)."""
    width_mm, height_mm = size_mm
    if not (width_mm > 0 and height_mm > 0):
        raise MicrometsError(f"--size-mm must be two positive numbers of mm, got {width_mm},{height_mm}")
    px_per_mm = 1000.0 / l0_mpp
    l0_width, l0_height = int(round(width_mm * px_per_mm)), int(round(height_mm * px_per_mm))
    rng = np.random.default_rng((seed, 7))
    centre = np.array([l0_width / 2, l0_height / 2])
    semi_axes = np.array([l0_width, l0_height]) * 0.5 * 0.78  # leaves room for fat and glass
    node = Polygon(centre + _lobulated(rng, 0.12) * semi_axes)
    node = shapely.make_valid(node) if not node.is_valid else node
    cortex = node.buffer(-CAPSULE_UM / l0_mpp)
    angle = rng.uniform(0, 2 * np.pi)
    wedge_r = 2 * max(l0_width, l0_height)
    spread = np.linspace(angle - 1.6, angle + 1.6, 32)
    wedge = Polygon(np.vstack([centre, centre + wedge_r * np.column_stack([np.cos(spread), np.sin(spread)])]))
    fat = node.buffer(0.09 * min(l0_width, l0_height)).intersection(wedge).difference(node)
    frame = shapely.box(0, 0, l0_width, l0_height)
    fat = fat.intersection(frame)

    placed: list[Lesion] = []
    room = node.buffer(-(CAPSULE_UM + LESION_MARGIN_UM) / l0_mpp)
    min_x, min_y, max_x, max_y = room.bounds
    separation_px = LESION_SEPARATION_UM / l0_mpp
    # place the largest lesions first: they are the hardest to fit
    order = sorted(range(len(lesions)), key=lambda i: -(lesions[i].diameter_mm or DIAMETER_RANGES_MM[
        lesions[i].size_class][1]))
    for index in order:
        spec = lesions[index]
        diameter_mm = spec.diameter_mm or float(rng.uniform(*DIAMETER_RANGES_MM[spec.size_class]))
        outline = lesion_outline(shape, diameter_mm * px_per_mm, rng, outlines)
        for _ in range(500):
            candidate = shapely.affinity.translate(outline, rng.uniform(min_x, max_x), rng.uniform(min_y, max_y))
            if room.contains(candidate) and all(
                candidate.distance(other.outline_l0) >= separation_px for other in placed
            ):
                placed.append(Lesion(0, spec.size_class, diameter_mm, shape, candidate))
                break
        else:
            raise MicrometsError(
                f"cannot fit a {diameter_mm:.2f} mm {spec.size_class} lesion with {len(placed)} others into a "
                f"{width_mm} x {height_mm} mm phantom: enlarge --size-mm or ask for fewer lesions"
            )
    if stroma:  # after the lesions, around them: a deposit displaces the stroma it grows into
        deposits = shapely.union_all([les.outline_l0 for les in placed]).buffer(LESION_MARGIN_UM / l0_mpp)
        stroma_l0 = _stroma(node, centre, l0_mpp, np.random.default_rng((seed, 11)))
        cortex = cortex.difference(stroma_l0.difference(deposits))
    ordered = sorted(placed, key=lambda les: (les.outline_l0.centroid.y, les.outline_l0.centroid.x))
    numbered = tuple(
        Lesion(i + 1, les.size_class, les.diameter_mm, les.shape, les.outline_l0) for i, les in enumerate(ordered)
    )
    return Layout(l0_width, l0_height, l0_mpp, node, cortex, fat, numbered)


def _stroma(node: Polygon, centre: np.ndarray, l0_mpp: float, rng: np.random.Generator):
    """Trabeculae (capsule → 25-45 % of the way to the centre) and stroma islands inside `node` (level-0 px)."""
    boundary = node.exterior
    parts = []
    for angle in rng.uniform(0, 2 * np.pi, N_TRABECULAE):
        far = centre + 4 * max(node.bounds[2:]) * np.array([np.cos(angle), np.sin(angle)])
        hit = shapely.intersection(boundary, shapely.LineString([centre, far]))
        start = np.asarray(shapely.get_coordinates(hit)[0])
        end = start + rng.uniform(0.25, 0.45) * (centre - start)
        parts.append(shapely.LineString([start, end]).buffer(TRABECULA_UM / 2 / l0_mpp))
    inner = node.buffer(-(CAPSULE_UM + LESION_MARGIN_UM) / l0_mpp)
    n_islands = max(1, int(round(node.area * (l0_mpp / 1000.0) ** 2)))
    min_x, min_y, max_x, max_y = inner.bounds
    while n_islands and inner.area > 0:
        xy = np.array([rng.uniform(min_x, max_x), rng.uniform(min_y, max_y)])
        if inner.contains(shapely.Point(xy)):
            radius = rng.uniform(*ISLAND_UM) / 2 / l0_mpp
            island = shapely.affinity.scale(shapely.Point(xy).buffer(radius), rng.uniform(0.6, 1.0), 1.0)
            parts.append(shapely.affinity.rotate(island, rng.uniform(0, 180)))
            n_islands -= 1
    return shapely.union_all(parts).intersection(node)


def expected_node_class(layout: Layout) -> str:
    """Node class of a phantom from its largest lesion by `rules.camelyon17` ("negative" without lesions).

    Lesions are at least `LESION_SEPARATION_UM` apart, so none group with another under the 75 µm rule.
    """
    if not layout.lesions:
        return "negative"
    return camelyon17.node_class(max(les.diameter_mm for les in layout.lesions))
