"""What a results directory holds, for the viewer: cases, their nodes and the slides it may serve.

The catalogue is built once from the ``result.json`` (``micromets.slide-result/1``) and ``case.json``
(``micromets.case/1``) files under the results directory (docs/DESIGN.md). Only the slide files named by those
results (their ``path``) are ever opened; every URL names a slide by its catalogue key, never by a path, so
a request for anything else is a 404.

A slide's key is its result folder relative to the results directory, with ``/`` → ``~`` and every character
outside ``[A-Za-z0-9_.-]`` → ``_`` (``p1/node1`` → ``p1~node1``); duplicates get ``-2``, ``-3``, … appended.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from micromets.errors import MicrometsError
from micromets.jsonfile import JsonFileError, read_json
from micromets.sizes import format_mm

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


@dataclass
class SlideEntry:
    """One analysed slide: its catalogue key, result folder and parsed result.json."""

    key: str
    result_dir: Path
    result: dict
    patient: str | None = None
    node: str | None = None

    @property
    def slide_path(self) -> Path:
        return Path(self.result["path"])


@dataclass
class Catalog:
    """Cases (patients) and slides of one results directory."""

    root: Path
    slides: dict[str, SlideEntry] = field(default_factory=dict)
    cases: list[dict] = field(default_factory=list)
    #: case key (``case`` of each case dict) → the patient folder holding its case.json (and review.jsonl)
    case_dirs: dict[str, Path] = field(default_factory=dict)
    #: result.json / case.json files left out, relative to ``root`` → why (listed by the viewer, never served)
    unreadable: dict[str, str] = field(default_factory=dict)


def _load(catalog: Catalog, path: Path, schema: str) -> dict | None:
    """The object in ``path`` when it is a ``schema`` file, else None: a file that cannot be read, is not JSON or
    nests deeper than the parser goes is noted in ``catalog.unreadable``; another program's JSON is skipped."""
    try:
        data = read_json(path)
    except JsonFileError as err:
        catalog.unreadable[path.relative_to(catalog.root).as_posix()] = err.why
        return None
    return data if isinstance(data, dict) and data.get("schema") == schema else None


def _case_nodes(case: dict) -> list[dict] | None:
    """The case's nodes when they are objects whose ``slides`` are lists of folder names, else None."""
    nodes = case.get("nodes", [])
    if not isinstance(nodes, list) or not all(isinstance(node, dict) for node in nodes):
        return None
    for node in nodes:
        slides = node.get("slides", [])
        if not isinstance(slides, list) or not all(isinstance(slide_id, str) for slide_id in slides):
            return None
    return nodes


def _key_for(rel: Path, taken: set[str]) -> str:
    base = "~".join(_UNSAFE.sub("_", part) for part in rel.parts) or "_"
    key, n = base, 1
    while key in taken:
        n += 1
        key = f"{base}-{n}"
    return key


def build_catalog(results_dir: str | Path) -> Catalog:
    """Scan ``results_dir`` for slide results and cases.

    Raises :class:`MicrometsError` when the folder does not exist or holds no readable ``result.json``.
    Foreign JSON files are skipped; unreadable ones (not JSON, nested too deeply, a case whose nodes are not
    objects) are left out and listed in :attr:`Catalog.unreadable`, and the others are still served.
    """
    root = Path(results_dir).resolve()
    if not root.is_dir():
        raise MicrometsError(f"{results_dir}: not a directory")
    catalog = Catalog(root)
    by_dir: dict[Path, SlideEntry] = {}
    for path in sorted(root.rglob("result.json")):
        result = _load(catalog, path, "micromets.slide-result/1")
        if result is None or "path" not in result:
            continue
        entry = SlideEntry(_key_for(path.parent.relative_to(root), set(catalog.slides)), path.parent, result)
        catalog.slides[entry.key] = entry
        by_dir[path.parent] = entry
    if not catalog.slides:
        raise MicrometsError(f"{results_dir}: no result.json found (run `micromets analyze` or `micromets case`)")
    in_case: set[str] = set()
    for path in sorted(root.rglob("case.json")):
        case = _load(catalog, path, "micromets.case/1")
        if case is None:
            continue
        case_nodes = _case_nodes(case)
        if case_nodes is None:
            why = "not a case file (its nodes are not objects listing slide folders)"
            catalog.unreadable[path.relative_to(root).as_posix()] = why
            continue
        nodes = []
        for node in case_nodes:
            keys = []
            for slide_id in node.get("slides", []):
                # a batch case names a slide done outside its patient folder as ../<slide_id>
                entry = by_dir.get(Path(os.path.normpath(path.parent / slide_id)))
                if entry is None:
                    continue
                entry.patient, entry.node = str(case.get("patient")), str(node.get("node"))
                keys.append(entry.key)
            in_case.update(keys)
            nodes.append({**{k: node.get(k) for k in ("node", "node_class", "decided_by", "largest_deposit_mm",
                                                      "osna_copies_per_ul")}, "slides": keys})
        case_key = _key_for(path.parent.relative_to(root), set(catalog.case_dirs))
        catalog.case_dirs[case_key] = path.parent
        catalog.cases.append({k: case.get(k) for k in ("patient", "pn_stage", "stage_mode", "stage_reason")}
                             | {"nodes": nodes, "case": case_key})
    loose = [key for key in catalog.slides if key not in in_case]
    if loose:
        catalog.cases.append({
            "patient": None, "case": None, "pn_stage": None, "stage_mode": None,
            "stage_reason": "slides analysed on their own",
            "nodes": [{"node": None, "node_class": catalog.slides[k].result.get("node_class"), "decided_by": None,
                       "largest_deposit_mm": catalog.slides[k].result.get("largest_deposit_mm"),
                       "osna_copies_per_ul": None, "slides": [k]} for k in loose],
        })
    return catalog


def _ood_warning(ood: dict | None) -> dict | None:
    """The slide's out-of-distribution warning for the top bar (:mod:`micromets.ood`): ``{"warning", "reasons"}``,
    None when not flagged."""
    from micromets.ood import WARNING

    if not ood or not ood.get("flagged"):
        return None
    return {"warning": WARNING, "reasons": [ood[c]["reason"] for c in ("tissue", "stain") if ood[c]["flagged"]]}


def slide_summary(entry: SlideEntry, case: dict | None) -> dict:
    """The JSON the front end needs to show one slide: size, resolution, heatmap placement, lesions, stage."""
    r = entry.result
    lesions = []
    for les in sorted(r.get("lesions", []), key=lambda les: -les["diameter_mm"]):
        xs = [p[0] for ring in les["l0_outline"] for p in ring]
        ys = [p[1] for ring in les["l0_outline"] for p in ring]
        lesions.append({k: les.get(k) for k in ("id", "class", "diameter_mm", "area_mm2", "max_probability",
                                                "confirmed_probability", "n_cells")}
                       | {"l0_bbox": [min(xs), min(ys), max(xs), max(ys)], "diameter_text": format_mm(les["diameter_mm"])})
    hm = r.get("heatmap") or {}
    return {
        "key": entry.key, "slide_id": r.get("slide_id"), "patient": entry.patient, "node": entry.node,
        "pn_stage": case.get("pn_stage") if case else None,
        "stage_mode": case.get("stage_mode") if case else None,
        "node_class": r.get("node_class"), "largest_deposit_mm": r.get("largest_deposit_mm"),
        "largest_deposit_text": format_mm(r.get("largest_deposit_mm")), "stain": r.get("stain"), "l0_mpp": r["l0_mpp"], "l0_width": r["l0_width"], "l0_height": r["l0_height"],
        "threshold": r.get("threshold"), "ood_warning": _ood_warning(r.get("ood")), "inked_mm2": r.get("inked_mm2"),
        "heatmap": {"cell_um": hm["cell_um"], "l0_origin": hm["l0_origin"], "shape": hm["shape"]} if hm else None,
        "lesions": lesions,
    }


def _closed_ring(ring: list) -> list[list[float]]:
    pts = [[float(p[0]), float(p[1])] for p in ring]
    return pts if pts[0] == pts[-1] else pts + [pts[0]]


def lesions_geojson(entry: SlideEntry) -> dict:
    """The slide's lesions as a GeoJSON FeatureCollection in level-0 pixels (one MultiPolygon per lesion)."""
    features = []
    for les in entry.result.get("lesions", []):
        coords = [[_closed_ring(ring)] for ring in les["l0_outline"]]
        props = {k: v for k, v in les.items() if k != "l0_outline"} | {"diameter_text": format_mm(les["diameter_mm"])}
        features.append({"type": "Feature", "id": les["id"], "geometry": {"type": "MultiPolygon",
                                                                          "coordinates": coords},
                         "properties": props})
    return {"type": "FeatureCollection", "features": features,
            "properties": {"slide_id": entry.result.get("slide_id"), "l0_mpp": entry.result["l0_mpp"],
                           "coordinates": "level-0 pixels"}}
