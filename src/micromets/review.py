"""The pathologist's review of a case: decisions in an append-only audit log, and the case they decide.

The log is ``DIR/<patient>/review.jsonl`` beside ``case.json``: one JSON object per line, appended and fsynced,
never rewritten. Each event has ``seq`` (1, 2, …), ``at`` (UTC, ISO 8601), ``by`` (the reviewer's name),
``action`` and its fields:

- ``accept`` / ``reject`` — ``slide``, ``finding``; ``reclassify`` — ``slide``, ``finding``, ``class``
  (``itc``, ``micro`` or ``macro``). A finding is ``lesion:<id>`` (confirmed lesion), ``candidate:<id>``
  (unconfirmed candidate: counts only once accepted or reclassified) or ``drawn:<n>`` (drawn by the pathologist).
  The latest decision on a finding holds.
- ``draw`` — ``slide``, ``l0_outline`` (one ring, level-0 px); measured by :func:`micromets.measure.measure_lesions`
  like every detected lesion and classed by :func:`micromets.rules.ajcc8.node_class`; gets id ``drawn:<n>``.
- ``ruler`` — ``slide``, ``l0_a``, ``l0_b`` (level-0 px) and ``length_um``; ``comment`` — ``text`` (optional
  ``slide``, ``finding``);
- ``sign`` — the sign-out: after it the case is frozen and every further event is refused.

The decided case is recomputed from the slides' results with the decisions applied, through the same
:func:`micromets.node.classify_node` and :func:`micromets.patient.stage_patient` as the proposed one.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import math
import os
import threading
from pathlib import Path

import shapely

from micromets.errors import MicrometsError
from micromets.jsonfile import read_json
from micromets.rules import NODE_CLASSES, node_class_rank
from micromets.rules.ajcc8 import node_class
from micromets.sizes import format_mm

LOG_NAME = "review.jsonl"
ACTIONS = ("accept", "reject", "reclassify", "draw", "ruler", "comment", "sign")
FINDING_KINDS = ("lesion", "candidate", "drawn")
MAX_TEXT = 2000
_LOCK = threading.Lock()


def read_log(patient_dir: str | Path) -> list[dict]:
    """Every event of the case's audit log, in order (empty when nobody reviewed it yet)."""
    path = Path(patient_dir) / LOG_NAME
    if not path.is_file():
        return []
    events = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            try:
                events.append(json.loads(line))
            except ValueError:
                raise MicrometsError(f"{path}:{i}: not a JSON line") from None
    return events


def _slide_results(patient_dir: Path, case: dict) -> dict[str, dict]:
    out = {}
    for node in case["nodes"]:
        for slide_id in node["slides"]:
            out[slide_id] = read_json(patient_dir / slide_id / "result.json", "micromets.slide-result/1")
    return out


def _check_point(value, result: dict, what: str) -> list[float]:
    if not (isinstance(value, list) and len(value) == 2 and all(isinstance(v, (int, float)) and math.isfinite(v)
                                                                 for v in value)):
        raise MicrometsError(f"{what} must be [x, y] in level-0 pixels")
    x, y = float(value[0]), float(value[1])
    if not (0 <= x <= result["l0_width"] and 0 <= y <= result["l0_height"]):
        raise MicrometsError(f"{what} ({x:.0f}, {y:.0f}) lies outside the slide")
    return [round(x, 1), round(y, 1)]


def _findings(result: dict, drawn: dict[str, dict]) -> dict[str, dict]:
    found = {f"lesion:{les['id']}": les for les in result.get("lesions", [])}
    found |= {f"candidate:{les['id']}": les for les in result.get("unconfirmed_lesions", [])}
    return found | drawn


def measure_drawn(ring_l0: list, result: dict, n_cells: int | None = None) -> dict:
    """A drawn outline as a lesion record: Feret diameter, area, ellipse axis as for detected lesions."""
    from micromets.measure import measure_lesions

    ring = [_check_point(p, result, "a vertex") for p in ring_l0] if isinstance(ring_l0, list) else []
    if len(ring) < 3:
        raise MicrometsError("a drawn deposit needs at least 3 vertices")
    measures = measure_lesions([shapely.Polygon(ring)], result["l0_mpp"], result.get("gap_um") or 75.0)
    if not measures or measures[0].area_mm2 <= 0:
        raise MicrometsError("the drawn outline encloses no area")
    m = measures[0]
    return {"l0_outline": [ring], "diameter_mm": round(m.diameter_mm, 4), "area_mm2": round(m.area_mm2, 5),
            "ellipse_major_mm": round(m.ellipse_major_mm, 4), "n_cells": n_cells,
            "class": node_class(m.diameter_mm, n_cells)}


def validate(event: dict, results: dict[str, dict], events: list[dict]) -> dict:
    """The event to append, checked against the case (raises :class:`MicrometsError` with the reason)."""
    if any(e["action"] == "sign" for e in events):
        raise MicrometsError("the case is signed out and frozen: no further changes")
    action, by = event.get("action"), str(event.get("by") or "").strip()
    if action not in ACTIONS:
        raise MicrometsError(f"unknown action {action!r} (expected one of {', '.join(ACTIONS)})")
    if not by or len(by) > 100:
        raise MicrometsError("every decision needs the reviewer's name ('by')")
    out = {"action": action, "by": by}
    slide = event.get("slide")
    if slide is not None or action in ("accept", "reject", "reclassify", "draw", "ruler"):
        if slide not in results:
            raise MicrometsError(f"slide {slide!r} is not a slide of this case")
        out["slide"] = slide
    if action in ("accept", "reject", "reclassify") or event.get("finding") is not None:
        finding = event.get("finding")
        if slide is None or finding not in _findings(results[slide], _drawn(events).get(slide, {})):
            raise MicrometsError(f"finding {finding!r} is not on slide {slide!r}")
        out["finding"] = finding
    if action == "reclassify":
        if event.get("class") not in NODE_CLASSES[1:]:
            raise MicrometsError(f"class {event.get('class')!r} is not itc, micro or macro")
        out["class"] = event["class"]
    elif action == "draw":
        out |= measure_drawn(event.get("l0_outline", [None])[0] if event.get("l0_outline") else None,
                             results[slide], event.get("n_cells"))
        out["finding"] = f"drawn:{1 + len(_drawn(events).get(slide, {}))}"
    elif action == "ruler":
        out["l0_a"] = _check_point(event.get("l0_a"), results[slide], "l0_a")
        out["l0_b"] = _check_point(event.get("l0_b"), results[slide], "l0_b")
        out["length_um"] = round(math.dist(out["l0_a"], out["l0_b"]) * results[slide]["l0_mpp"], 2)
    if action in ("comment", "sign") or event.get("text"):
        text = str(event.get("text") or "").strip()
        if action == "comment" and not text:
            raise MicrometsError("a comment needs text")
        if len(text) > MAX_TEXT:
            raise MicrometsError(f"text longer than {MAX_TEXT} characters")
        if text:
            out["text"] = text
    return out


def append(patient_dir: str | Path, event: dict) -> dict:
    """Check ``event`` against the case and append it to the audit log (with seq and time); returns it."""
    patient_dir = Path(patient_dir)
    case = read_json(patient_dir / "case.json", "micromets.case/1")
    results = _slide_results(patient_dir, case)
    with _LOCK:
        events = read_log(patient_dir)
        record = {"seq": len(events) + 1, "at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}
        record |= validate(event, results, events)
        with open(patient_dir / LOG_NAME, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record, ensure_ascii=False) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
    return record


def _drawn(events: list[dict]) -> dict[str, dict[str, dict]]:
    out: dict[str, dict[str, dict]] = {}
    for e in events:
        if e["action"] == "draw":
            les = {k: e[k] for k in ("l0_outline", "diameter_mm", "area_mm2", "ellipse_major_mm", "n_cells", "class")}
            out.setdefault(e["slide"], {})[e["finding"]] = les | {"id": e["finding"], "by": e["by"], "at": e["at"]}
    return out


def decided_result(result: dict, slide_events: list[dict], drawn: dict[str, dict]) -> tuple[dict, list[dict]]:
    """The slide result with the decisions applied, and every finding with its proposed and decided state."""
    decision: dict[str, dict] = {}
    for e in slide_events:
        if e["action"] in ("accept", "reject", "reclassify"):
            decision[e["finding"]] = e
    rows = []
    for key, les in _findings(result, drawn).items():
        kind = key.split(":")[0]
        proposed = les["class"] if kind == "lesion" else "not counted" if kind == "candidate" else None
        d = decision.get(key)
        if d is None:
            decided = "not counted" if kind == "candidate" else les["class"]
        elif d["action"] == "reject":
            decided = "rejected"
        else:
            decided = d.get("class", les["class"])
        rows.append({"finding": key, "proposed": proposed, "decided": decided,
                     "decision": d["action"] if d else ("drawn" if kind == "drawn" else None),
                     "by": (d or les).get("by"), "at": (d or les).get("at"), "lesion": les})
    counted = [r for r in rows if r["decided"] in NODE_CLASSES]
    decided = copy.deepcopy(result)
    decided["lesions"] = [r["lesion"] | {"class": r["decided"]} for r in counted]
    decided["node_class"] = max((r["decided"] for r in counted), key=node_class_rank, default="negative")
    decided["largest_deposit_mm"] = max((r["lesion"]["diameter_mm"] for r in counted), default=None)
    return decided, rows


def decided_slide_results(patient_dir: str | Path) -> tuple[dict, dict[str, dict], dict[str, list[dict]], list[dict]]:
    """The case, each slide's result with the decisions applied (:func:`decided_result`; the proposed result
    when nobody reviewed it), each slide's finding rows, and the audit log."""
    patient_dir = Path(patient_dir)
    case = read_json(patient_dir / "case.json", "micromets.case/1")
    results = _slide_results(patient_dir, case)
    events = read_log(patient_dir)
    drawn = _drawn(events)
    decided_results, findings = {}, {}
    for slide_id, result in results.items():
        decided_results[slide_id], findings[slide_id] = decided_result(
            result, [e for e in events if e.get("slide") == slide_id], drawn.get(slide_id, {}))
    return case, decided_results, findings, events


def review_state(patient_dir: str | Path) -> dict:
    """Proposed and decided case side by side, the findings, the changes and the sign-out of one patient."""
    from micromets.case import stage_case

    case, decided_results, findings, events = decided_slide_results(patient_dir)
    evidence = [(n["node"], [decided_results[s] for s in n["slides"]], n.get("osna_copies_per_ul"))
                for n in case["nodes"]]
    decided = stage_case(case["patient"], evidence, case.get("failed_slides", []), case.get("stage_mode",
                                                                                             "camelyon17"))
    sign = next((e for e in events if e["action"] == "sign"), None)
    nodes = [{"node": p["node"], "proposed": p["node_class"], "decided": d["node_class"],
              "proposed_mm": p.get("largest_deposit_mm"), "decided_mm": d.get("largest_deposit_mm")}
             for p, d in zip(case["nodes"], decided["nodes"])]
    return {"patient": case["patient"], "stage_mode": case.get("stage_mode"),
            "proposed": {"pn_stage": case.get("pn_stage"), "stage_reason": case.get("stage_reason")},
            "decided": {"pn_stage": decided["pn_stage"], "stage_reason": decided["stage_reason"]},
            "nodes": nodes, "findings": {s: [{k: v for k, v in r.items() if k != "lesion"}
                                             | {k: r["lesion"].get(k) for k in ("diameter_mm", "l0_outline",
                                                                                  "max_probability",
                                                                                  "confirmed_probability",
                                                                                  "n_cells")}
                                             | {"diameter_text": format_mm(r["lesion"].get("diameter_mm"))}
                                             for r in rows]
                                         for s, rows in findings.items()},
            "events": events, "signed": sign, "frozen": sign is not None}


def export_csv(state: dict) -> str:
    """One row per finding: slide, finding, proposed, decided, decision, who, when, diameter (mm)."""
    import csv
    import io

    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["slide", "finding", "proposed", "decided", "decision", "by", "at", "diameter_mm"])
    for slide, rows in state["findings"].items():
        for r in rows:
            w.writerow([slide, r["finding"], r["proposed"] or "", r["decided"], r["decision"] or "",
                        r["by"] or "", r["at"] or "", r["diameter_mm"]])
    return buf.getvalue()


def export_asap_xml(state: dict, slide: str) -> bytes:
    """The slide's findings as ASAP XML (level-0 pixels): each outline named by its finding id, in the group of
    its decided class (itc / micro / macro / rejected …), so ASAP shows what the pathologist decided."""
    import io

    from micromets.annotations import write_asap_xml

    rows = state["findings"].get(slide, [])
    outlines = [shapely.MultiPolygon([shapely.Polygon(ring) for ring in r["l0_outline"]]) for r in rows]
    buf = io.BytesIO()
    write_asap_xml(buf, outlines, names=[r["finding"] for r in rows], groups=[r["decided"] for r in rows])
    return buf.getvalue()


def export_geojson(state: dict, slide: str) -> dict:
    """The slide's findings (decided class as QuPath classification) and saved rulers, level-0 pixels."""
    feats = []
    for r in state["findings"].get(slide, []):
        feats.append({"type": "Feature", "id": r["finding"],
                      "geometry": {"type": "MultiPolygon",
                                   "coordinates": [[ring + [ring[0]] if ring[0] != ring[-1] else ring]
                                                   for ring in r["l0_outline"]]},
                      "properties": {"objectType": "annotation", "classification": {"name": r["decided"]},
                                     **{k: r[k] for k in ("finding", "proposed", "decided", "decision", "by",
                                                          "at", "diameter_mm")}}})
    for e in state["events"]:
        if e["action"] == "ruler" and e["slide"] == slide:
            feats.append({"type": "Feature", "geometry": {"type": "LineString", "coordinates": [e["l0_a"], e["l0_b"]]},
                          "properties": {"objectType": "annotation", "name": f"ruler {e['length_um']} µm",
                                         "by": e["by"], "at": e["at"]}})
    return {"type": "FeatureCollection", "features": feats, "properties": {"coordinates": "level-0 pixels"}}
