"""Ground truth of a phantom: lesion outlines in level-0 pixels as ASAP XML and QuPath-style GeoJSON.

ASAP XML follows the CAMELYON16/17 reference annotations (one `<Annotation Type="Polygon">` per lesion, group
"metastases", coordinates in level-0 pixels). The GeoJSON is a FeatureCollection, one Feature per lesion with
a Polygon geometry in level-0 pixels (QuPath convention: y down) and properties `lesion_id`, `class`,
`diameter_mm` (maximum Feret diameter), `area_mm2`, `l0_mpp`, `objectType: annotation` and a QuPath
`classification`.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

from micromets.phantom.layout import Layout

ASAP_GROUP = "metastases"


def _ring(lesion) -> list[list[float]]:
    return [[round(x, 2), round(y, 2)] for x, y in lesion.outline_l0.exterior.coords]


def write_asap_xml(path: str | Path, layout: Layout) -> None:
    """Lesion outlines as an ASAP annotation XML file (level-0 px)."""
    root = ET.Element("ASAP_Annotations")
    annotations = ET.SubElement(root, "Annotations")
    for lesion in layout.lesions:
        node = ET.SubElement(annotations, "Annotation", Name=f"lesion {lesion.lesion_id}", Type="Polygon",
                             PartOfGroup=ASAP_GROUP, Color="#F4FA58")
        coords = ET.SubElement(node, "Coordinates")
        for order, (x, y) in enumerate(_ring(lesion)[:-1]):
            ET.SubElement(coords, "Coordinate", Order=str(order), X=f"{x:.2f}", Y=f"{y:.2f}")
    groups = ET.SubElement(root, "AnnotationGroups")
    group = ET.SubElement(groups, "Group", Name=ASAP_GROUP, PartOfGroup="None", Color="#ff0000")
    ET.SubElement(group, "Attributes")
    ET.indent(root)
    ET.ElementTree(root).write(path, encoding="utf-8", xml_declaration=True)


def write_geojson(path: str | Path, layout: Layout, node_class: str) -> None:
    """Lesion outlines as a GeoJSON FeatureCollection (level-0 px), with the expected node class."""
    mm2_per_px = (layout.l0_mpp / 1000.0) ** 2
    features = [
        {
            "type": "Feature",
            "geometry": {"type": "Polygon", "coordinates": [_ring(lesion)]},
            "properties": {
                "objectType": "annotation",
                "classification": {"name": "Tumor", "color": [200, 0, 0]},
                "lesion_id": lesion.lesion_id,
                "class": lesion.size_class,
                "shape": lesion.shape,
                "diameter_mm": round(lesion.diameter_mm, 6),
                "area_mm2": round(lesion.outline_l0.area * mm2_per_px, 6),
                "l0_mpp": layout.l0_mpp,
            },
        }
        for lesion in layout.lesions
    ]
    collection = {"type": "FeatureCollection", "node_class": node_class, "l0_mpp": layout.l0_mpp,
                  "features": features}
    Path(path).write_text(json.dumps(collection, indent=1))
