"""lesions.geojson (QuPath) and lesions.xml (ASAP): confirmed lesions and unconfirmed candidates, told apart, read
back by micromets.annotations' own readers with the outlines of result.json."""

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import shapely

from micromets.analyze import analyze_slide
from micromets.annotations import read_asap_xml, read_geojson

SLIDES = Path(__file__).resolve().parents[1] / "demo" / "slides"


def _outline(record: dict) -> shapely.Geometry:
    """result.json's outline of a lesion: the exterior ring of each part (level-0 px, 0.1 px)."""
    return shapely.union_all([shapely.Polygon(ring) for ring in record["l0_outline"]])


def _exteriors(geom: shapely.Geometry) -> shapely.Geometry:
    return shapely.union_all([shapely.Polygon(part.exterior) for part in shapely.get_parts(geom)])


# node3 with a confirmation at 0.8: its ITC (confirmed 0.749) is an unconfirmed candidate; node2: one micrometastasis
@pytest.mark.parametrize(("node", "confirm"), [("node3", 0.8), ("node2", None)])
def test_lesions_and_candidates_round_trip_through_qupath_geojson_and_asap_xml(tmp_path, node, confirm):
    result = analyze_slide(SLIDES / f"{node}.tiff", tmp_path, stain="he", confirm_threshold=confirm)
    assert bool(result["unconfirmed_lesions"]) == (confirm is not None)
    folder = tmp_path / result["slide_id"]
    lesions, candidates = result["lesions"], result["unconfirmed_lesions"]
    assert lesions or candidates
    expected = [(_outline(r), True) for r in lesions] + [(_outline(r), False) for r in candidates]

    collection = json.loads((folder / "lesions.geojson").read_text())
    props = [f["properties"] for f in collection["features"]]
    assert [p["confirmed"] for p in props] == [ok for _, ok in expected]
    assert all(p["objectType"] == "annotation" for p in props)  # QuPath: editable outlines, not detections
    assert [p["classification"]["name"] for p in props] == (
        [f"Tumour ({r['class']})" for r in lesions] + ["Candidate (unconfirmed)"] * len(candidates))
    read_back = read_geojson(folder / "lesions.geojson").tumour
    assert len(read_back) == len(expected)
    for geom, (want, _) in zip(read_back, expected):  # GeoJSON keeps the holes too
        assert _exteriors(geom).symmetric_difference(want).area <= 0.1 * want.length  # result.json rounds to 0.1 px

    asap = read_asap_xml(folder / "lesions.xml")  # one annotation per part (ASAP keeps exterior rings), same name
    parts = [(shapely.Polygon(ring), "Tumor" if ok else "Candidate", f"{'lesion' if ok else 'candidate'} {r['id']}")
             for records, ok in ((lesions, True), (candidates, False)) for r in records for ring in r["l0_outline"]]
    groups = [a.get("PartOfGroup") for a in ET.parse(folder / "lesions.xml").getroot().iter("Annotation")]
    assert groups == [group for _, group, _ in parts]
    assert asap.tumour_names == [name for _, _, name in parts]
    assert len(asap.tumour) == len(parts)
    for geom, (want, _, _) in zip(asap.tumour, parts):
        assert _exteriors(geom).symmetric_difference(want).area <= 0.1 * want.length
