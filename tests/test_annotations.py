"""ASAP XML, QuPath GeoJSON and CAMELYON16 polygon JSON: real files, exact round trips, and bad inputs."""

import json

import numpy as np
import pytest
import shapely

from micromets.annotations import (
    geojson_dict,
    guess_format,
    read_annotations,
    read_asap_xml,
    read_camelyon16_json,
    read_geojson,
    write_asap_xml,
    write_geojson,
)
from micromets.errors import MicrometsError
from micromets.measure import measure_lesions
from micromets.rules.ajcc8 import node_class


def test_patient_004_node_4_is_itc(shared_data):
    """The real CAMELYON17 annotation whose official node label is ITC: every lesion <= 0.2 mm."""
    annotation = read_annotations(shared_data / "camelyon17" / "patient_004_node_4.xml")
    assert len(annotation.tumour) == 3 and not annotation.exclusion and not annotation.skipped
    lesions = measure_lesions(annotation.geometries_l0(), 0.243)
    assert lesions and all(lesion.diameter_mm <= 0.2 for lesion in lesions)
    assert node_class(lesions[0].diameter_mm) == "itc"
    assert lesions[0].diameter_mm == pytest.approx(0.1246, abs=1e-4)


def test_camelyon16_json_exclusions_and_degenerate_strokes(shared_data):
    folder = shared_data / "camelyon16_polygons"
    with_holes = read_camelyon16_json(folder / "Tumor_025.json")
    assert len(with_holes.tumour) == 1 and len(with_holes.exclusion) == 26
    cut = shapely.union_all(with_holes.geometries_l0()).area
    assert cut < shapely.make_valid(with_holes.tumour[0]).area
    stroke = read_camelyon16_json(folder / "Tumor_054.json")
    assert stroke.skipped == ["positive '_8': 2 vertices, no area"]
    assert guess_format(folder / "Tumor_054.json") == "camelyon16-json"


def test_asap_round_trip_is_exact(tmp_path, shared_data):
    original = read_asap_xml(shared_data / "camelyon17" / "patient_004_node_4.xml")
    holes = [shapely.box(12700, 88900, 12750, 88950)]
    out = tmp_path / "copy.xml"
    write_asap_xml(out, original.tumour, holes, names=original.tumour_names)
    again = read_asap_xml(out)
    assert again.tumour_names == original.tumour_names
    for a, b in zip(original.tumour, again.tumour):
        assert np.array_equal(shapely.get_coordinates(a), shapely.get_coordinates(b))
    assert len(again.exclusion) == 1 and again.exclusion[0].equals(holes[0])


def test_geojson_round_trip_is_exact(tmp_path):
    rng = np.random.default_rng(1)
    ring = rng.uniform(0, 1e5, size=(7, 2))
    hull = shapely.convex_hull(shapely.MultiPoint(ring))
    with_hole = shapely.Polygon(hull.exterior.coords, [shapely.box(*hull.centroid.buffer(5).bounds).exterior.coords])
    multi = shapely.MultiPolygon([shapely.box(0.1, 0.2, 10.3, 20.7), shapely.box(100, 100, 101.5, 102.25)])
    out = tmp_path / "lesions.geojson"
    write_geojson(out, [with_hole, multi], [{"diameter_mm": 1.5}, {"diameter_mm": 0.1}])
    back = read_geojson(out)
    assert [g.geom_type for g in back.tumour] == ["Polygon", "MultiPolygon"]
    assert shapely.equals_exact(back.tumour[0], with_hole, tolerance=0)
    assert shapely.equals_exact(back.tumour[1], multi, tolerance=0)
    data = json.loads(out.read_text())
    assert data["features"][0]["properties"]["classification"]["name"] == "Tumor"
    assert data["features"][1]["properties"]["diameter_mm"] == 0.1


def test_geojson_variants_and_exclusion(tmp_path):
    feature = geojson_dict([shapely.box(0, 0, 10, 10)])["features"][0]
    ignore = geojson_dict([shapely.box(2, 2, 4, 4)], classification="Ignore*")["features"][0]
    point = {"type": "Feature", "geometry": {"type": "Point", "coordinates": [1, 2]}, "properties": {}}
    path = tmp_path / "list.json"
    path.write_text(json.dumps([feature, ignore, point]))
    ann = read_annotations(path)
    assert len(ann.tumour) == 1 and len(ann.exclusion) == 1 and ann.skipped == ["feature '#2': Point has no area"]
    assert shapely.union_all(ann.geometries_l0()).area == 100 - 4
    bare = tmp_path / "bare.geojson"
    bare.write_text(json.dumps(feature["geometry"]))
    assert len(read_annotations(bare).tumour) == 1


BILLION_LAUGHS = """<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]>
<ASAP_Annotations><Annotations><Annotation Name="&lol3;" Type="Polygon" PartOfGroup="Tumor"><Coordinates>
<Coordinate Order="0" X="0" Y="0"/></Coordinates></Annotation></Annotations></ASAP_Annotations>"""

EXTERNAL_ENTITY = """<?xml version="1.0"?>
<!DOCTYPE a [<!ENTITY xxe SYSTEM "file:///etc/passwd">]><ASAP_Annotations>&xxe;</ASAP_Annotations>"""


def _asap(body: str) -> str:
    return f'<?xml version="1.0"?><ASAP_Annotations><Annotations>{body}</Annotations></ASAP_Annotations>'


def _coords(*pairs) -> str:
    return "".join(f'<Coordinate Order="{i}" X="{x}" Y="{y}"/>' for i, (x, y) in enumerate(pairs))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("<ASAP_Annotations><Annotations>", "malformed XML"),
        (BILLION_LAUGHS, "unsafe XML"),
        (EXTERNAL_ENTITY, "unsafe XML"),
        ("<?xml version='1.0'?><svg/>", "not an ASAP annotation"),
        (_asap('<Annotation Name="a" Type="Polygon"><Coordinates></Coordinates></Annotation>'), "empty outline"),
        (_asap(f'<Annotation Name="a" Type="Polygon"><Coordinates>{_coords((0, 0), (1, "x"), (2, 0))}'
               "</Coordinates></Annotation>"), "numeric"),
        (_asap(f'<Annotation Name="a" Type="Polygon"><Coordinates>{_coords((0, 0), (1, "nan"), (2, 0))}'
               "</Coordinates></Annotation>"), "finite"),
        (_asap('<Annotation Name="a" Type="Ellipse"><Coordinates/></Annotation>'), "unknown annotation type"),
    ],
)
def test_bad_asap_xml(tmp_path, text, message):
    path = tmp_path / "bad.xml"
    path.write_text(text)
    with pytest.raises(MicrometsError, match=message) as err:
        read_annotations(path, "asap")
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_asap_degenerate_outline_and_dots_are_skipped(tmp_path):
    path = tmp_path / "few.xml"
    path.write_text(_asap(
        f'<Annotation Name="line" Type="Polygon"><Coordinates>{_coords((0, 0), (5, 5), (10, 10))}</Coordinates>'
        f'</Annotation><Annotation Name="d" Type="Dot"><Coordinates>{_coords((1, 1))}</Coordinates></Annotation>'
        f'<Annotation Name="r" Type="Rectangle"><Coordinates>{_coords((0, 0), (4, 0), (4, 2), (0, 2))}'
        "</Coordinates></Annotation>"
    ))
    ann = read_asap_xml(path)
    assert len(ann.skipped) == 2 and ann.tumour_names == ["r"] and ann.tumour[0].area == 8


def test_a_valid_ring_that_folds_back_on_itself_is_skipped_as_degenerate(tmp_path):
    """Four vertices not on one line, but the ring retraces itself (hypothesis found it): GEOS calls it valid with
    area 0, so it is skipped like a line, while a bow tie (invalid) is kept for repair."""
    folding = [[1.0, 1.0], [2.5437695186286857e-47, 0.0], [0.0, -1.0], [0.0, 0.0]]
    bow_tie = [[0, 0], [4, 4], [4, 0], [0, 4]]
    path = tmp_path / "Tumor_999.json"
    path.write_text(json.dumps({"positive": [{"name": "fold", "vertices": folding},
                                             {"name": "bow", "vertices": bow_tie}]}))
    ann = read_camelyon16_json(path)
    assert ann.skipped == ["positive 'fold': 4 vertices, no area"] and ann.tumour_names == ["bow"]
    assert not ann.tumour[0].is_valid


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ("{not json", "malformed JSON"),
        ({"type": "FeatureCollection", "features": {"a": 1}}, "expected a GeoJSON"),
        ({"type": "FeatureCollection", "features": [{"type": "Feature", "geometry": "Polygon"}]}, "geometry object"),
        ({"type": "Polygon", "coordinates": []}, "non-empty list of rings"),
        ({"type": "Polygon", "coordinates": [[]]}, "empty outline"),
        ({"type": "Polygon", "coordinates": [[["a", "b"], [1, 2], [3, 4]]]}, "number pairs"),
        ({"type": "Polygon", "coordinates": [[[0, 0, 0], [1, 2, 0], [3, 4, 0]]]}, r"\[x, y\] pairs"),
        ({"type": "Circle", "coordinates": [0, 0]}, "Polygon or MultiPolygon"),
        ({"type": "MultiPolygon", "coordinates": 5}, "non-empty list of polygons"),
        ([{"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [0, 1]]]},
           "properties": [1]}], "properties"),
    ],
)
def test_bad_geojson(tmp_path, payload, message):
    path = tmp_path / "bad.geojson"
    path.write_text(payload if isinstance(payload, str) else json.dumps(payload))
    with pytest.raises(MicrometsError, match=message):
        read_annotations(path, "geojson")


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"positive": [{"name": "a"}]}, "vertices"),
        ({"positive": [{"name": "a", "vertices": []}]}, "empty outline"),
        ({"nothing": []}, "CAMELYON16 polygon JSON"),
        ({"positive": "x"}, "CAMELYON16 polygon JSON"),
    ],
)
def test_bad_camelyon16_json(tmp_path, payload, message):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(payload))
    with pytest.raises(MicrometsError, match=message):
        read_camelyon16_json(path)


def test_missing_file_and_unknown_format(tmp_path):
    with pytest.raises(MicrometsError, match="no such file"):
        read_annotations(tmp_path / "none.xml", "asap")
    with pytest.raises(MicrometsError, match="unknown annotation format"):
        read_annotations(tmp_path / "none.xml", "svg")
    with pytest.raises(MicrometsError, match="suffix"):
        guess_format(tmp_path / "a.txt")
