"""Lesion outlines from and to files: ASAP XML, QuPath GeoJSON and the CAMELYON16 polygon JSON.

All coordinates are level-0 pixels of the slide (x right, y down). Three formats:

``asap``
    ASAP / CAMELYON XML (``<ASAP_Annotations><Annotations><Annotation Name Type PartOfGroup><Coordinates>
    <Coordinate Order X Y/>``). Parsed with ``defusedxml`` so entity expansion ("billion laughs"), external
    entities and DTDs are refused. Groups ``_2``, ``Exclusion`` and ``Exception`` are exclusion regions (normal
    tissue cut out of a tumour outline, as in the CAMELYON16 reference masks); every other group is tumour.
    Polygon, Spline and Rectangle annotations are outlines (a spline by its control points); Dot and PointSet
    annotations carry no area and are skipped.
``geojson``
    QuPath GeoJSON: a FeatureCollection, a list of Features, one Feature or one geometry. Polygon and
    MultiPolygon geometries are outlines (holes kept); a classification named ``Exclusion``, ``Ignore`` or
    ``Ignore*`` marks an exclusion region. Point and line geometries carry no area and are skipped.
``camelyon16-json``
    ``{"positive": [{"name", "vertices": [[x, y], ...]}], "negative": [...]}`` (NCRF's conversion of the
    CAMELYON16 XMLs): ``positive`` is tumour, ``negative`` exclusion.

Bad input policy: a file that does not parse, has wrong types, missing or non-finite coordinates, or an outline
with no vertices at all raises ``MicrometsError`` naming the file and the annotation. A well-formed but degenerate
outline (fewer than 3 distinct vertices, all on one line, or a valid ring folding back on itself: no area) is
skipped and listed in ``Annotations.skipped``; the real CAMELYON16 file Tumor_054 contains one such 2-vertex stroke.

Writers emit every coordinate with ``repr(float)``, so writing and reading back returns the same numbers exactly.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import shapely
from defusedxml import DefusedXmlException
from defusedxml.ElementTree import ParseError
from defusedxml.ElementTree import parse as safe_parse
from shapely.geometry.base import BaseGeometry

from micromets.errors import MicrometsError
from micromets.jsonfile import read_json
from micromets.measure import repair

FORMATS = ("asap", "geojson", "camelyon16-json")

ASAP_EXCLUSION_GROUPS = {"_2", "exclusion", "exception"}
ASAP_AREA_TYPES = {"polygon", "spline", "rectangle"}
ASAP_POINT_TYPES = {"dot", "pointset"}
GEOJSON_AREA_TYPES = {"Polygon", "MultiPolygon"}
GEOJSON_OTHER_TYPES = {"Point", "MultiPoint", "LineString", "MultiLineString", "GeometryCollection"}


@dataclass
class Annotations:
    """Outlines read from one file: tumour regions and exclusion regions, level-0 pixels."""

    path: Path
    tumour: list[BaseGeometry] = field(default_factory=list)
    tumour_names: list[str] = field(default_factory=list)
    exclusion: list[BaseGeometry] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    @property
    def n_invalid(self) -> int:
        """Number of tumour outlines that are not valid polygons (self-intersections) and will be repaired."""
        return int((~shapely.is_valid(np.array(self.tumour, dtype=object))).sum()) if self.tumour else 0

    def geometries_l0(self) -> list[BaseGeometry]:
        """Tumour outlines with the exclusion regions cut out (invalid outlines repaired first if needed)."""
        if not self.exclusion:
            return list(self.tumour)
        tumour = repair(np.array(self.tumour, dtype=object))
        cut = shapely.union_all(repair(np.array(self.exclusion, dtype=object)))
        remaining = shapely.difference(tumour, cut)
        return [g for g in remaining if not g.is_empty and g.area > 0]


def _ring(coords, where: str, path: Path) -> np.ndarray | None:
    """Validated (n, 2) float vertex array, or None if the outline is degenerate (no area)."""
    try:
        xy = np.array(coords, dtype=float)
    except (TypeError, ValueError):
        raise MicrometsError(f"{path}: {where}: coordinates must be [x, y] number pairs") from None
    if xy.size == 0:
        raise MicrometsError(f"{path}: {where}: empty outline (no vertices)")
    if xy.ndim != 2 or xy.shape[1] != 2:
        raise MicrometsError(f"{path}: {where}: coordinates must be [x, y] pairs, got shape {xy.shape}")
    if not np.isfinite(xy).all():
        raise MicrometsError(f"{path}: {where}: coordinates must be finite numbers")
    distinct = np.unique(xy, axis=0)
    if len(distinct) < 3:
        return None
    centred = distinct - distinct.mean(axis=0)
    if np.linalg.matrix_rank(centred, tol=1e-9 * max(1.0, float(np.abs(centred).max()))) < 2:
        return None
    ring = shapely.Polygon(xy)
    if ring.is_valid and not ring.area > 0:  # valid but folding back on itself: no area in floating point
        return None
    return xy


def _add(ann: Annotations, geom: BaseGeometry, name: str, exclusion: bool) -> None:
    if exclusion:
        ann.exclusion.append(geom)
    else:
        ann.tumour.append(geom)
        ann.tumour_names.append(name)


def read_asap_xml(path: str | Path) -> Annotations:
    """Read an ASAP / CAMELYON annotation XML (see the module docstring)."""
    path = Path(path)
    try:
        root = safe_parse(path).getroot()
    except DefusedXmlException as err:
        raise MicrometsError(f"{path}: refused unsafe XML ({type(err).__name__})") from None
    except ParseError as err:
        raise MicrometsError(f"{path}: malformed XML: {err}") from None
    except OSError as err:
        raise MicrometsError(f"{path}: cannot read: {err.strerror or err}") from None
    if root.tag != "ASAP_Annotations":
        raise MicrometsError(f"{path}: not an ASAP annotation file (root element <{root.tag}>)")
    ann = Annotations(path)
    for index, element in enumerate(root.iter("Annotation")):
        name = element.get("Name", f"#{index}")
        kind = element.get("Type", "Polygon").lower()
        where = f"annotation {name!r}"
        if kind in ASAP_POINT_TYPES:
            ann.skipped.append(f"{where}: {kind} has no area")
            continue
        if kind not in ASAP_AREA_TYPES:
            raise MicrometsError(f"{path}: {where}: unknown annotation type {element.get('Type')!r}")
        points = []
        for coordinate in element.iter("Coordinate"):
            try:
                points.append((float(coordinate.get("Order", len(points))), float(coordinate.get("X")),
                               float(coordinate.get("Y"))))
            except (TypeError, ValueError):
                raise MicrometsError(f"{path}: {where}: a Coordinate lacks a numeric Order, X or Y") from None
        points.sort(key=lambda p: p[0])
        xy = _ring([p[1:] for p in points], where, path)
        if xy is None:
            ann.skipped.append(f"{where}: {len(points)} vertices, no area")
            continue
        if kind == "rectangle":
            xy = np.array(shapely.envelope(shapely.MultiPoint(xy)).exterior.coords)[:-1]
        group = (element.get("PartOfGroup") or "").lower()
        _add(ann, shapely.Polygon(xy), name, group in ASAP_EXCLUSION_GROUPS)
    return ann


def _fmt(value: float) -> str:
    return repr(float(value))


def write_asap_xml(path: str | Path, tumour, exclusion=(), names=None, group: str = "Tumor", groups=None) -> None:
    """Write outlines as ASAP XML: tumour polygons in ``group`` (or each in its own ``groups[i]``), exclusion
    polygons in group ``Exclusion``.

    Each polygon's exterior ring is written (ASAP polygons have no holes; a MultiPolygon becomes one
    annotation per part).
    """
    root = ET.Element("ASAP_Annotations")
    annotations = ET.SubElement(root, "Annotations")
    tumour_groups = list(groups) if groups is not None else [group] * len(tumour)
    entries = list(zip(tumour, tumour_groups)) + [(g, "Exclusion") for g in exclusion]
    count = 0
    for index, (geom, part_of) in enumerate(entries):
        for part in shapely.get_parts(geom):
            name = names[index] if names is not None and index < len(names) else f"Annotation {count}"
            element = ET.SubElement(annotations, "Annotation", Name=str(name), Type="Polygon",
                                    PartOfGroup=part_of, Color="#F4FA58")
            coordinates = ET.SubElement(element, "Coordinates")
            for order, (x, y) in enumerate(np.asarray(part.exterior.coords)[:-1]):
                ET.SubElement(coordinates, "Coordinate", Order=str(order), X=_fmt(x), Y=_fmt(y))
            count += 1
    groups = ET.SubElement(root, "AnnotationGroups")
    for part_of in dict.fromkeys([group, *tumour_groups, "Exclusion"]):
        colour = "#00FF00" if part_of == "Exclusion" else "#FF0000" if part_of == group else "#808080"
        ET.SubElement(ET.SubElement(groups, "Group", Name=part_of, PartOfGroup="None", Color=colour), "Attributes")
    ET.indent(root, space="\t")
    ET.ElementTree(root).write(path, encoding="utf-8", xml_declaration=True)


def _geojson_polygon(coords, where: str, path: Path) -> BaseGeometry | None:
    if not isinstance(coords, list) or not coords:
        raise MicrometsError(f"{path}: {where}: a Polygon needs a non-empty list of rings")
    rings = [_ring(ring, f"{where} ring {i}", path) for i, ring in enumerate(coords)]
    if rings[0] is None:
        return None
    return shapely.Polygon(rings[0], [r for r in rings[1:] if r is not None])


def _is_exclusion(properties: dict) -> bool:
    classification = properties.get("classification") or {}
    name = classification.get("name", "") if isinstance(classification, dict) else str(classification)
    name = str(name).lower()
    return name == "exclusion" or name.startswith("ignore")


def read_geojson(path: str | Path) -> Annotations:
    """Read QuPath GeoJSON (see the module docstring)."""
    path = Path(path)
    data = read_json(path, parse_constant=lambda c: float("nan"))
    if isinstance(data, dict) and data.get("type") == "FeatureCollection":
        features = data.get("features")
    elif isinstance(data, dict) and data.get("type") == "Feature":
        features = [data]
    elif isinstance(data, dict) and "type" in data and "coordinates" in data:
        features = [{"type": "Feature", "geometry": data, "properties": {}}]
    else:
        features = data
    if not isinstance(features, list):
        raise MicrometsError(f"{path}: expected a GeoJSON FeatureCollection, Feature list, Feature or geometry")
    ann = Annotations(path)
    for index, feature in enumerate(features):
        if not isinstance(feature, dict) or not isinstance(feature.get("geometry"), dict):
            raise MicrometsError(f"{path}: feature {index} is not a GeoJSON Feature with a geometry object")
        properties = feature.get("properties") or {}
        if not isinstance(properties, dict):
            raise MicrometsError(f"{path}: feature {index}: 'properties' must be an object")
        name = str(properties.get("name", feature.get("id", f"#{index}")))
        where = f"feature {name!r}"
        geometry = feature["geometry"]
        kind, coords = geometry.get("type"), geometry.get("coordinates")
        if kind in GEOJSON_OTHER_TYPES:
            ann.skipped.append(f"{where}: {kind} has no area")
            continue
        if kind not in GEOJSON_AREA_TYPES:
            raise MicrometsError(f"{path}: {where}: geometry type must be Polygon or MultiPolygon, got {kind!r}")
        if kind == "Polygon":
            coords = [coords]
        elif not isinstance(coords, list) or not coords:
            raise MicrometsError(f"{path}: {where}: a MultiPolygon needs a non-empty list of polygons")
        parts = [_geojson_polygon(poly, where, path) for poly in coords]
        parts = [p for p in parts if p is not None]
        if not parts:
            ann.skipped.append(f"{where}: no area")
            continue
        geom = parts[0] if kind == "Polygon" else shapely.MultiPolygon(parts)
        _add(ann, geom, name, _is_exclusion(properties))
    return ann


def _polygon_coords(part: shapely.Polygon) -> list:
    return [np.asarray(ring.coords).tolist() for ring in (part.exterior, *part.interiors)]


def geojson_dict(geoms, properties: list[dict] | None = None, classification: str = "Tumor") -> dict:
    """A QuPath-compatible FeatureCollection: one annotation Feature per geometry (level-0 pixels)."""
    features = []
    for index, geom in enumerate(geoms):
        parts = shapely.get_parts(geom)
        if len(parts) == 1 and isinstance(geom, shapely.Polygon):
            geometry = {"type": "Polygon", "coordinates": _polygon_coords(parts[0])}
        else:
            geometry = {"type": "MultiPolygon", "coordinates": [_polygon_coords(p) for p in parts]}
        props = {"objectType": "annotation", "classification": {"name": classification, "color": [200, 0, 0]}}
        if properties is not None:
            props.update(properties[index])
        features.append({"type": "Feature", "geometry": geometry, "properties": props})
    return {"type": "FeatureCollection", "features": features}


def write_geojson(path: str | Path, geoms, properties: list[dict] | None = None, classification="Tumor") -> None:
    """Write :func:`geojson_dict` to ``path`` (floats written with full precision: round-trip exact)."""
    Path(path).write_text(json.dumps(geojson_dict(geoms, properties, classification)), encoding="utf-8")


def read_camelyon16_json(path: str | Path) -> Annotations:
    """Read the CAMELYON16 polygon JSON (``positive`` tumour, ``negative`` exclusion)."""
    path = Path(path)
    data = read_json(path, parse_constant=lambda c: float("nan"))
    if not isinstance(data, dict) or not isinstance(data.get("positive", []), list) \
            or not isinstance(data.get("negative", []), list) or not ({"positive", "negative"} & data.keys()):
        raise MicrometsError(f"{path}: expected {{'positive': [...], 'negative': [...]}} (CAMELYON16 polygon JSON)")
    ann = Annotations(path)
    for key in ("positive", "negative"):
        for index, entry in enumerate(data.get(key, [])):
            if not isinstance(entry, dict) or "vertices" not in entry:
                raise MicrometsError(f"{path}: {key}[{index}] needs a 'vertices' list")
            name = str(entry.get("name", f"{key}[{index}]"))
            where = f"{key} {name!r}"
            xy = _ring(entry["vertices"], where, path)
            if xy is None:
                ann.skipped.append(f"{where}: {len(entry['vertices'])} vertices, no area")
                continue
            _add(ann, shapely.Polygon(xy), name, key == "negative")
    return ann


_READERS = {"asap": read_asap_xml, "geojson": read_geojson, "camelyon16-json": read_camelyon16_json}


def guess_format(path: str | Path) -> str:
    """``asap`` for .xml; for .json/.geojson ``camelyon16-json`` if it has positive/negative keys, else geojson."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".xml":
        return "asap"
    if suffix == ".geojson":
        return "geojson"
    if suffix == ".json":
        data = read_json(path, parse_constant=lambda c: float("nan"))
        return "camelyon16-json" if isinstance(data, dict) and {"positive", "negative"} & data.keys() else "geojson"
    raise MicrometsError(f"{path}: cannot tell the annotation format from the suffix; give --format")


def read_annotations(path: str | Path, fmt: str | None = None) -> Annotations:
    """Read outlines in format ``fmt`` (``asap``, ``geojson``, ``camelyon16-json``; guessed when None)."""
    fmt = fmt or guess_format(path)
    if fmt not in _READERS:
        raise MicrometsError(f"unknown annotation format {fmt!r} (expected one of {', '.join(FORMATS)})")
    if not Path(path).is_file():
        raise MicrometsError(f"{path}: no such file")
    return _READERS[fmt](path)

