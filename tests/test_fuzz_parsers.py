"""Fuzzing the parsers of untrusted input: case manifests (micromets.case) and annotations (micromets.annotations).

The property for every parser: any input either parses into values that keep the documented invariants, or raises
`MicrometsError` with one line naming the file — never another exception, never a hang. Hand-made hostile inputs
(XML bombs, external entities, huge coordinate lists, NaN/inf, wrong GeoJSON types, CSV column errors, duplicate
node rows) pin the clear error each must give.
"""

import json
import math
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from micromets.annotations import read_annotations, read_asap_xml, read_camelyon16_json, read_geojson
from micromets.case import OPTIONAL_COLUMNS, REQUIRED_COLUMNS, read_manifest
from micromets.errors import MicrometsError

FUZZ = settings(max_examples=75, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow])
STRESS = settings(max_examples=3000, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


def fuzz(*strategies, **named):
    """The decorated body as two tests: a fast deterministic one (75 examples) and a `slow` random one (3,000
    examples, ``make stress``), e.g. `test_geojson_fuzz` and `test_geojson_fuzz_stress`."""
    def register(body):
        fast = FUZZ(given(*strategies, **named)(body))
        stress = pytest.mark.slow(STRESS(given(*strategies, **named)(body)))
        globals()[f"{body.__name__}_stress"] = stress
        return fast
    return register


def _parse(reader, name: str, content: str | bytes):
    """Write `content` to a fresh file called `name` and parse it: (result, None) or (None, MicrometsError)."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / name
        path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8", "surrogatepass"))
        try:
            return reader(path), None
        except MicrometsError as err:
            message = str(err)
            assert message and "\n" not in message.strip(), message
            assert name in message or "unknown" in message, message
            return None, err


# ---- manifests ------------------------------------------------------------------------------------------------

CELL = st.one_of(
    st.text(max_size=12),
    st.sampled_from(["", " ", "he", "IHC", "x", "nan", "inf", "-inf", "-1", "0", "250", "5000.0", "1e400", "1,5",
                     "a/b", "..", ".", "slide.svs", "/abs/slide.tif", '"quoted, comma"', "\ufeff"]),
)
COLUMN = st.one_of(st.sampled_from(REQUIRED_COLUMNS + OPTIONAL_COLUMNS + ("extra", "Patient", "")),
                   st.text(max_size=6))


def _csv_line(cells: list[str]) -> str:
    return ",".join('"' + c.replace('"', '""') + '"' if any(ch in c for ch in ',"\n\r') else c for c in cells)


VALID_HEADER = st.lists(st.sampled_from(OPTIONAL_COLUMNS), unique=True).flatmap(
    lambda optional: st.permutations(list(REQUIRED_COLUMNS) + optional))


GOOD_CELL = {"patient": st.sampled_from(["p1", "p2", "patient_004"]), "node": st.sampled_from(["1", "2", "3"]),
             "slide_path": st.sampled_from(["", "a.svs", "b.tif", "sub/c.ndpi", "/abs/d.mrxs"]),
             "stain": st.sampled_from(["", "he", "IHC"]),
             "osna_copies_per_ul": st.one_of(st.just(""), st.floats(0, 1e6).map(repr))}


@st.composite
def manifest_rows(draw, header):
    """Rows of the header's width whose cells are mostly plausible values, sometimes garbage or ragged."""
    rows = []
    for _ in range(draw(st.integers(0, 6))):
        row = [draw(st.one_of(GOOD_CELL.get(col, CELL), CELL) if draw(st.booleans()) else GOOD_CELL.get(col, CELL))
               for col in header]
        if draw(st.integers(0, 9)) == 0:
            row = row[:-1] if draw(st.booleans()) else row + [draw(CELL)]
        rows.append(row)
    return rows


@fuzz(data=st.data(), header=st.one_of(VALID_HEADER, st.lists(COLUMN, min_size=0, max_size=7)),
       newline=st.sampled_from(["\n", "\r\n"]))
def test_manifest_fuzz_parses_or_fails_clearly(data, header, newline):
    rows = data.draw(manifest_rows(header))
    text = newline.join(_csv_line(r) for r in [header, *rows]) + newline
    parsed, _ = _parse(read_manifest, "cases.csv", text)
    if parsed is None:
        return
    assert parsed, "a manifest without rows must be refused"
    seen = set()
    for row in parsed:
        assert row.patient and row.node and "/" not in row.patient and row.patient not in (".", "..")
        assert row.stain in (None, "he", "ihc")
        assert row.osna_copies_per_ul is None or (math.isfinite(row.osna_copies_per_ul)
                                                  and row.osna_copies_per_ul >= 0)
        assert row.slide_path is not None or row.osna_copies_per_ul is not None
        key = (row.patient, row.node, row.slide_path)
        assert row.slide_path is None or key not in seen
        seen.add(key)


@fuzz(st.binary(max_size=400))
def test_manifest_random_bytes(data):
    _parse(read_manifest, "cases.csv", data)


@pytest.mark.parametrize("text, message", [
    ("patient,node\np1,1\n", "missing column(s) slide_path"),
    ("patient,node,slide_path,colour\np1,1,a.svs,red\n", "unknown column(s) colour"),
    ("patient,node,slide_path\np1,1,a.svs,extra\n", "more fields than columns"),
    ("patient,node,slide_path\n", "no rows"),
    ("patient,node,slide_path\np1,1,a.svs\np1,1,a.svs\n", "listed twice"),
    ("patient,node,slide_path,osna_copies_per_ul\np1,1,,300\np1,1,,7000\n", "two different OSNA values"),
    ("patient,node,slide_path,osna_copies_per_ul\np1,1,a.svs,nan\n", "finite number"),
    ("patient,node,slide_path,osna_copies_per_ul\np1,1,a.svs,inf\n", "finite number"),
    ("patient,node,slide_path,osna_copies_per_ul\np1,1,a.svs,-5\n", ">= 0"),
    ("patient,node,slide_path\n../p,1,a.svs\n", "path separators"),
    ("patient,node,slide_path,stain\np1,1,a.svs,pas\n", "not he or ihc"),
])
def test_manifest_errors_are_clear(text, message):
    parsed, err = _parse(read_manifest, "cases.csv", text)
    assert parsed is None and message in str(err)


# ---- annotations ----------------------------------------------------------------------------------------------

NUMBER = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-2**70, 2**70),
                   st.sampled_from([0, 1.5, 1e308, -1e308]))
JSON = st.recursive(st.one_of(st.none(), st.booleans(), NUMBER, st.text(max_size=8)),
                    lambda inner: st.one_of(st.lists(inner, max_size=5),
                                            st.dictionaries(st.text(max_size=8), inner, max_size=5)),
                    max_leaves=30)
COORD = st.floats(-1e6, 1e6, allow_nan=False)
POINT = st.one_of(st.tuples(COORD, COORD).map(list), st.lists(NUMBER, min_size=0, max_size=3), JSON)
RING = st.one_of(st.lists(st.tuples(COORD, COORD).map(list), min_size=3, max_size=8),
                 st.lists(POINT, max_size=8), JSON)
GEOM_TYPE = st.sampled_from(["Polygon", "MultiPolygon", "Point", "LineString", "GeometryCollection", "Circle",
                             None, 3])


def _geometry(kind, coords):
    return {"type": kind, "coordinates": coords}


GEOJSON_DOC = st.one_of(
    JSON,
    st.builds(_geometry, GEOM_TYPE, st.one_of(st.lists(RING, max_size=3), st.lists(st.lists(RING, max_size=2),
                                                                                    max_size=2))),
    st.builds(lambda feats: {"type": "FeatureCollection", "features": feats},
              st.lists(st.one_of(JSON, st.builds(lambda g, p: {"type": "Feature", "geometry": g, "properties": p},
                                                 st.builds(_geometry, GEOM_TYPE, st.lists(RING, max_size=3)),
                                                 st.one_of(st.none(), JSON))), max_size=4)),
)


def _json_text(value) -> str:
    return json.dumps(value, allow_nan=True)  # NaN/Infinity literals: Python's json reads them back


def _check_annotations(ann) -> None:
    """The documented contract: degenerate valid outlines are skipped; invalid ones (self-intersecting, a hole
    on the shell) are kept, counted by `n_invalid` and repaired by `geometries_l0` when exclusions are cut."""
    for geom in ann.tumour + ann.exclusion:
        assert not geom.is_empty and np.isfinite(np.asarray(geom.bounds)).all()
        assert geom.area > 0 or not geom.is_valid
    ann.geometries_l0()


@fuzz(GEOJSON_DOC)
def test_geojson_fuzz(doc):
    parsed, _ = _parse(read_geojson, "lesions.geojson", _json_text(doc))
    if parsed is not None:
        _check_annotations(parsed)


@fuzz(st.one_of(JSON, st.dictionaries(st.sampled_from(["positive", "negative", "other"]),
                                       st.lists(st.one_of(JSON, st.builds(lambda v: {"name": "t", "vertices": v},
                                                                          RING)), max_size=3), max_size=3)))
def test_camelyon16_json_fuzz(doc):
    parsed, _ = _parse(read_camelyon16_json, "Tumor_999.json", _json_text(doc))
    if parsed is not None:
        _check_annotations(parsed)


XML_VALUE = st.one_of(st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc")), max_size=8),
                      st.sampled_from(["nan", "inf", "-inf", "1e999", "0", "12.5", "1,5", ""]))


def _asap(annotations) -> str:
    parts = ["<?xml version=\"1.0\"?><ASAP_Annotations><Annotations>"]
    for kind, group, coords in annotations:
        parts.append(f'<Annotation Name="a" Type="{kind}" PartOfGroup="{group}"><Coordinates>')
        for order, x, y in coords:
            parts.append(f'<Coordinate Order="{order}" X="{x}" Y="{y}"/>')
        parts.append("</Coordinates></Annotation>")
    parts.append("</Annotations></ASAP_Annotations>")
    return "".join(parts)


def _xml_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace('"', "&quot;").replace("<", "&lt;")


ASAP_DOC = st.lists(st.tuples(
    st.sampled_from(["Polygon", "Spline", "Rectangle", "Dot", "PointSet", "Ellipse", ""]),
    st.sampled_from(["Tumor", "_0", "_2", "Exclusion", "metastases"]),
    st.lists(st.tuples(st.one_of(st.integers(-1, 9).map(str), XML_VALUE),
                       st.one_of(NUMBER.map(str), XML_VALUE), st.one_of(NUMBER.map(str), XML_VALUE)),
             max_size=7).map(lambda cs: [tuple(map(_xml_escape, c)) for c in cs])), max_size=4)


@fuzz(ASAP_DOC)
def test_asap_xml_fuzz(doc):
    parsed, _ = _parse(read_asap_xml, "node.xml", _asap(doc))
    if parsed is not None:
        _check_annotations(parsed)


@fuzz(st.binary(max_size=300), st.sampled_from(["a.xml", "a.geojson", "a.json"]))
def test_annotation_random_bytes(data, name):
    _parse(read_annotations, name, data)


BILLION_LAUGHS = ('<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
                  + "".join(f'<!ENTITY lol{i} "{("&lol%s;" % (i - 1 if i > 1 else "")) * 10}">' for i in range(1, 10))
                  + ']><ASAP_Annotations>&lol9;</ASAP_Annotations>')
EXTERNAL_ENTITY = ('<?xml version="1.0"?><!DOCTYPE a [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>'
                   '<ASAP_Annotations><Annotations><Annotation Name="&xxe;" Type="Polygon" PartOfGroup="Tumor">'
                   '</Annotation></Annotations></ASAP_Annotations>')


@pytest.mark.parametrize("reader, name, content, message", [
    (read_asap_xml, "bomb.xml", BILLION_LAUGHS, "refused unsafe XML"),
    (read_asap_xml, "xxe.xml", EXTERNAL_ENTITY, "refused unsafe XML"),
    (read_asap_xml, "cut.xml", "<ASAP_Annotations><Annotations>", "malformed XML"),
    (read_asap_xml, "other.xml", "<svg/>", "not an ASAP annotation file"),
    (read_asap_xml, "nan.xml", _asap([("Polygon", "Tumor", [(0, "nan", 1), (1, 5, 1), (2, 5, 5)])]), "finite"),
    (read_geojson, "inf.geojson", _json_text(_geometry("Polygon", [[[0, 0], [1e999, 0], [5, 5], [0, 0]]])),
     "finite"),
    (read_geojson, "types.geojson", _json_text({"type": "FeatureCollection", "features": [{"type": "Feature"}]}),
     "not a GeoJSON Feature"),
    (read_geojson, "circle.geojson", _json_text({"type": "Feature", "properties": {},
                                                 "geometry": _geometry("Circle", [0, 0])}),
     "geometry type must be Polygon or MultiPolygon"),
    (read_geojson, "str.geojson", _json_text(_geometry("Polygon", "0,0 1,1")), "non-empty list of rings"),
    (read_camelyon16_json, "list.json", "[1, 2]", "expected {'positive'"),
])
def test_hostile_annotations_give_clear_errors(reader, name, content, message):
    started = time.perf_counter()
    parsed, err = _parse(reader, name, content)
    assert parsed is None and message in str(err), err
    assert time.perf_counter() - started < 5


def test_huge_coordinate_lists_parse_in_bounded_time():
    angles = np.linspace(0, 2 * np.pi, 200_000, endpoint=False)
    ring = np.c_[50_000 + 20_000 * np.cos(angles), 50_000 + 20_000 * np.sin(angles)].round(2).tolist()
    doc = {"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {}, "geometry": _geometry("Polygon", [ring + [ring[0]]])}]}
    started = time.perf_counter()
    parsed, err = _parse(read_geojson, "huge.geojson", json.dumps(doc))
    assert err is None and len(parsed.tumour) == 1
    assert parsed.tumour[0].area == pytest.approx(np.pi * 20_000**2, rel=1e-3)
    xml = _asap([("Polygon", "Tumor", [(i, x, y) for i, (x, y) in enumerate(ring[:50_000])])])
    parsed, err = _parse(read_asap_xml, "huge.xml", xml)
    assert err is None and len(parsed.tumour) == 1
    assert time.perf_counter() - started < 60
