"""A patient's case: the manifest of slides per node → per-slide results → node classes → pN stage → report.

Manifest (CSV, header required): ``patient,node,slide_path[,stain][,osna_copies_per_ul]``

- ``slide_path`` is relative to the manifest's folder (or absolute); several rows may share one node.
- ``stain`` is ``he``, ``ihc`` or empty (detected from the slide).
- ``osna_copies_per_ul`` is the node's OSNA CK19 mRNA result in copies/µL (empty: not done). A node may also
  appear with an empty ``slide_path`` and only an OSNA value.

Output for each patient: ``OUT/<patient>/<slide_id>/…`` (see :mod:`micromets.analyze`; a second file of the same
name gets ``<slide_id>~<hash>/``, :mod:`micromets.folders`), ``OUT/<patient>/case.json`` and the report. A slide that
fails is listed in ``failed_slides`` with its one-line reason; the rest still count, and the stage is provisional.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from micromets.errors import MicrometsError
from micromets.words import counted

SCHEMA = "micromets.case/1"
REQUIRED_COLUMNS = ("patient", "node", "slide_path")
OPTIONAL_COLUMNS = ("stain", "osna_copies_per_ul")


@dataclass(frozen=True)
class ManifestRow:
    """One line of a case manifest (``line`` is the 1-based line number in the file)."""

    patient: str
    node: str
    slide_path: Path | None
    stain: str | None
    osna_copies_per_ul: float | None
    line: int


def _parse_copies(text: str, where: str) -> float | None:
    if text.strip() == "":
        return None
    try:
        value = float(text)
    except ValueError:
        raise MicrometsError(f"{where}: osna_copies_per_ul {text!r} is not a number") from None
    if not math.isfinite(value) or value < 0:
        raise MicrometsError(f"{where}: osna_copies_per_ul {text!r} must be a finite number >= 0")
    return value


def read_manifest(path: str | Path) -> list[ManifestRow]:
    """Read and check a case manifest; raises :class:`MicrometsError` with the file and line at fault."""
    path = Path(path)
    if not path.is_file():
        raise MicrometsError(f"{path}: no such manifest file")
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh, strict=True)  # strict: an unterminated quote is an error, not a long field
            columns = [c.strip() for c in (reader.fieldnames or [])]
            twice = sorted(c for c, n in Counter(columns).items() if n > 1)  # linear: a header may be huge
            if twice:
                raise MicrometsError(f"{path}:1: column(s) {', '.join(twice)} given twice in the header")
            missing = [c for c in REQUIRED_COLUMNS if c not in columns]
            if missing:
                raise MicrometsError(f"{path}: missing column(s) {', '.join(missing)} "
                                     f"(expected {','.join(REQUIRED_COLUMNS + OPTIONAL_COLUMNS)})")
            known = set(REQUIRED_COLUMNS + OPTIONAL_COLUMNS)
            unknown = [c for c in columns if c not in known]
            if unknown:
                named = ", ".join(unknown[:10]) + (f", … ({len(unknown)} in all)" if len(unknown) > 10 else "")
                raise MicrometsError(f"{path}: unknown column(s) {named} "
                                     f"(expected {','.join(REQUIRED_COLUMNS + OPTIONAL_COLUMNS)})")
            reader.fieldnames = columns
            rows = list(reader)
    except UnicodeDecodeError:
        raise MicrometsError(f"{path}: not a UTF-8 text CSV file") from None
    except csv.Error as err:
        raise MicrometsError(f"{path}: malformed CSV ({err})") from None
    if not rows:
        raise MicrometsError(f"{path}: manifest has no rows")
    out: list[ManifestRow] = []
    seen: set[tuple] = set()
    osna_of_node: dict[tuple[str, str], float | None] = {}
    for i, row in enumerate(rows, start=2):
        where = f"{path}:{i}"
        if None in row:
            raise MicrometsError(f"{where}: more fields than columns")
        patient, node = (row.get("patient") or "").strip(), (row.get("node") or "").strip()
        if not patient or not node:
            raise MicrometsError(f"{where}: patient and node must not be empty")
        if any(sep in patient for sep in ("/", "\\")) or patient in (".", ".."):
            raise MicrometsError(f"{where}: patient id {patient!r} must not contain path separators")
        slide_text = (row.get("slide_path") or "").strip()
        slide = None
        if slide_text:
            slide = Path(slide_text)
            slide = slide if slide.is_absolute() else (path.parent / slide)
        stain = (row.get("stain") or "").strip().lower() or None
        if stain not in (None, "he", "ihc"):
            raise MicrometsError(f"{where}: stain {row['stain']!r} is not he or ihc")
        copies = _parse_copies(row.get("osna_copies_per_ul") or "", where)
        if slide is None and copies is None:
            raise MicrometsError(f"{where}: a row needs a slide_path or an osna_copies_per_ul value")
        key = (patient, node, str(slide))
        if slide is not None and key in seen:
            raise MicrometsError(f"{where}: slide {slide_text} listed twice for patient {patient} node {node}")
        seen.add(key)
        node_key = (patient, node)
        if copies is not None:
            if osna_of_node.get(node_key) not in (None, copies):
                raise MicrometsError(f"{where}: node {node} of patient {patient} has two different OSNA values")
            osna_of_node[node_key] = copies
        out.append(ManifestRow(patient, node, slide, stain, copies, i))
    return out


def _write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_suffix(path.suffix + ".partial")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def write_case(patient_dir: Path, case: dict, slides_of_node: dict[str, list[tuple[str, dict]]]) -> None:
    """Name each node's slide result folders in ``case`` (``slides``: paths relative to ``patient_dir``) with their
    out-of-distribution flags (``ood``, :func:`ood_summary`), from ``(folder, result)`` pairs per node, and write
    ``patient_dir/case.json`` atomically: the one writer of case files, for `micromets case` and `micromets batch`."""
    for entry in case["nodes"]:
        slides = slides_of_node.get(entry["node"], [])
        entry["slides"] = [folder for folder, _ in slides]
        entry["ood"] = {folder: ood_summary(result.get("ood")) for folder, result in slides}
    patient_dir.mkdir(parents=True, exist_ok=True)
    _write_json_atomic(patient_dir / "case.json", case)


def stage_case(patient: str, evidence: list[tuple[str, list[dict], float | None]], failed_slides: list[dict],
               stage_mode: str = "camelyon17") -> dict:
    """The ``case.json`` dict of one patient from each node's evidence ``(node, slide results, OSNA copies/µL)``.

    A node with neither a slide result nor an OSNA value (every slide failed) is left out of the staging; its
    failures are in ``failed_slides``, the case is marked incomplete (``complete`` false) and its stage reason
    starts with "provisional", naming what is missing: the stage may change once those slides are analysed.
    """
    from micromets.node import classify_node
    from micromets.patient import stage_patient

    nodes = [{"node": node, **classify_node(results, copies)}
             for node, results, copies in evidence if results or copies is not None]
    case = {"schema": SCHEMA, "patient": patient, "stage_mode": stage_mode, "failed_slides": failed_slides,
            "complete": not failed_slides, "nodes": nodes}
    if nodes:
        case["pn_stage"], case["stage_reason"] = stage_patient(nodes, stage_mode)
    else:
        case["pn_stage"], case["stage_reason"] = None, "no node could be analysed"
    if failed_slides:
        unstaged = [node for node, results, copies in evidence if not results and copies is None]
        missing = f"{counted(len(failed_slides), 'slide')} could not be analysed"
        if unstaged:
            missing += f", {'node' if len(unstaged) == 1 else 'nodes'} {', '.join(unstaged)} not staged"
        case["stage_reason"] = f"provisional ({missing}): {case['stage_reason']}"
    return case


def ood_summary(ood: dict | None) -> dict | None:
    """A slide's out-of-distribution checks (``result.json`` ``ood``, :mod:`micromets.ood`) as ``case.json``
    carries them: ``{"flagged": bool, "reasons": [the flagged checks' reasons]}`` (None: not checked, IHC)."""
    if ood is None:
        return None
    return {"flagged": bool(ood["flagged"]),
            "reasons": [ood[check]["reason"] for check in ("tissue", "stain") if ood[check]["flagged"]]}


def stage_text(case: dict) -> str:
    """The patient's stage as printed: ``pN1mi``, ``pN1mi (provisional)`` for an incomplete case, or ``no
    stage``."""
    stage = case["pn_stage"] or "no stage"
    return stage if case["complete"] else f"{stage} (provisional)"


def run_case(manifest: str | Path, out_dir: str | Path, stage_mode: str = "camelyon17", detector=None,
             gap_um: float | None = None, report: bool = True,
             on_slide: Callable[[ManifestRow, dict | None, str | None], None] | None = None,
             progress: Callable[[int, int], None] | None = None, scan_mode: str = "thorough",
             screen=None, on_start: Callable[[ManifestRow], None] | None = None) -> list[dict]:
    """Run every slide of a manifest and stage each patient; returns the ``case.json`` dicts.

    ``scan_mode`` is the detector mode of every slide (``thorough`` or ``fast`` with the coarse ``screen``
    model, see :func:`micromets.analyze.analyze_slide`).

    ``on_start(row)`` is called before each slide, ``progress(done, total)`` as its patches are scored and
    ``on_slide(row, result, error)`` after it (``error`` is the one-line reason of a failure).
    """
    from micromets.analyze import analyze_slide
    from micromets.folders import plan_folders
    from micromets.measure import DEFAULT_GAP_UM
    from micromets.model import Detector
    rows = read_manifest(manifest)
    detector = detector or Detector.load()
    out_dir = Path(out_dir)
    cases = []
    for patient in dict.fromkeys(r.patient for r in rows):
        patient_dir = out_dir / patient
        prows = [r for r in rows if r.patient == patient]
        slide_rows = [r for r in prows if r.slide_path is not None]
        folders = dict(zip((r.line for r in slide_rows), plan_folders([r.slide_path for r in slide_rows],
                                                                       patient_dir)))
        results: dict[int, dict] = {}
        failed = []
        for row in slide_rows:
            if on_start:
                on_start(row)
            try:
                results[row.line] = analyze_slide(row.slide_path, patient_dir, mode=scan_mode, detector=detector,
                                                  screen=screen, stain=row.stain, gap_um=gap_um or DEFAULT_GAP_UM,
                                                  progress=progress, folder=folders[row.line])
                error = None
            except MicrometsError as err:
                error = str(err)
                failed.append({"path": str(row.slide_path), "node": row.node, "error": error})
            if on_slide:
                on_slide(row, results.get(row.line), error)
        evidence = []
        for node in dict.fromkeys(r.node for r in prows):
            nrows = [r for r in prows if r.node == node]
            copies = next((r.osna_copies_per_ul for r in nrows if r.osna_copies_per_ul is not None), None)
            evidence.append((node, [results[r.line] for r in nrows if r.line in results], copies))
        case = stage_case(patient, evidence, failed, stage_mode)
        # a node's slides are named by their folders (two files may share a name)
        write_case(patient_dir, case, {node: [(folders[r.line], results[r.line]) for r in prows
                                              if r.node == node and r.line in results]
                                       for node in dict.fromkeys(r.node for r in prows)})
        if report:
            from micromets.report import write_report

            case["report"] = str(write_report(patient_dir))
        cases.append(case)
    return cases
