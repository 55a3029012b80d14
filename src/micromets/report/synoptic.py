"""The synoptic nodal block of the case report, as the CAP breast protocol asks for the regional lymph nodes.

Source: College of American Pathologists, "Protocol for the Examination of Resection Specimens From Patients With
Invasive Carcinoma of the Breast" (version 4.x, 2020 onwards), section "Regional Lymph Nodes": number of sentinel
nodes examined; number of nodes with macrometastases, micrometastases and isolated tumour cells; size of the
largest nodal metastatic deposit; extranodal extension; the pN category with its modifiers (sn), (i+), (mol+).
The method(s) of nodal evaluation (H&E, immunohistochemistry, molecular / OSNA) are listed as well.

The rules are not repeated here: each convention re-stages the case through :func:`micromets.case.stage_case`
(``node.classify_node`` + ``patient.stage_patient``) with the deposit classes of that convention:

* AJCC 8 (``rules.ajcc8``): the classes the slides already carry (0.2 mm is ITC, 2.0 mm micro);
* CAMELYON17 (``rules.camelyon17``): each deposit re-classed by the challenge's wording (0.2 mm micro, 2.0 mm
  macro, 200 cells micro), then the challenge's pN with the AJCC 8 modifiers (``camelyon17.with_modifiers``).

A deposit whose class is not the AJCC 8 rule's class of its size and cell count was reclassified by the
pathologist: that class stands in both conventions. When the pathologist has recorded decisions
(``micromets.review``), the block shows the decided values; otherwise those proposed by micromets.
"""

from __future__ import annotations

import re

from micromets.rules import ajcc8, camelyon17
from micromets.words import counted

CONVENTIONS = {"ajcc8": "AJCC 8th edition", "camelyon17": "CAMELYON17"}
STAIN_METHODS = {"he": "H&E", "ihc": "IHC (cytokeratin)"}
EXTRANODAL_EXTENSION = "not assessed (micromets cannot assess it)"
_MODIFIER = re.compile(r"\((?:sn|i\+|mol\+)\)")


def _camelyon17_class(lesion: dict) -> str:
    """The CAMELYON17 class of one deposit; a class set by the pathologist (not the AJCC 8 rule's) stands."""
    diameter_mm, n_cells = lesion["diameter_mm"], lesion.get("n_cells")
    if lesion["class"] != ajcc8.node_class(diameter_mm, n_cells):
        return lesion["class"]
    return camelyon17.node_class(diameter_mm, n_cells)


def _in_convention(result: dict, mode: str) -> dict:
    """The slide result with its deposits (and so its slide class) in the classes of ``mode``."""
    if mode == "ajcc8":
        return result
    from micromets.rules import node_class_rank

    lesions = [les | {"class": _camelyon17_class(les)} for les in result["lesions"]]
    return result | {"lesions": lesions,
                     "node_class": max((les["class"] for les in lesions), key=node_class_rank, default="negative")}


def _methods(case: dict, results: dict[str, dict]) -> str:
    stains = [results[s].get("stain", "he") for n in case["nodes"] for s in n["slides"] if s in results]
    parts = [f"{STAIN_METHODS.get(stain, stain)} ({counted(stains.count(stain), 'slide')})"
             for stain in dict.fromkeys(stains)]
    n_osna = sum(n.get("osna_copies_per_ul") is not None for n in case["nodes"])
    if n_osna:
        parts.append(f"OSNA CK19 mRNA ({counted(n_osna, 'node')})")
    return ", ".join(parts) or "none"


def synoptic(case: dict, results: dict[str, dict], events: list[dict]) -> dict:
    """The synoptic values of one patient in both conventions.

    ``case`` is the ``case.json`` dict, ``results`` each readable slide's result (the decided one from
    :func:`micromets.review.decided_slide_results` when reviewed), ``events`` the review audit log (empty: not
    reviewed). Returns ``{"reviewed", "n_decisions", "n_sentinel", "n_examined", "largest_mm", "largest_node",
    "methods", "extranodal_extension", "conventions"}``; ``conventions`` holds per convention ``mode``, ``label``,
    ``case_mode`` (the case's own staging rule), ``macro``/``micro``/``itc`` node counts, ``pn`` (with
    modifiers), ``modifiers`` and ``reason`` (the rule that decided, :func:`micromets.patient.stage_patient`).
    """
    from micromets.case import stage_case

    sentinel = [n.get("sentinel", True) for n in case["nodes"]]
    conventions = []
    for mode, label in CONVENTIONS.items():
        evidence = [(n["node"], [_in_convention(results[s], mode) for s in n["slides"] if s in results],
                     n.get("osna_copies_per_ul")) for n in case["nodes"]]
        staged = stage_case(case["patient"], evidence, case.get("failed_slides", []), mode)
        classes = [n["node_class"] for n in staged["nodes"]]
        pn = staged["pn_stage"]
        if mode == "camelyon17" and pn is not None:
            pn = camelyon17.with_modifiers(
                pn, n_nodes=len(staged["nodes"]), sentinel_only=all(sentinel),
                mol_positive=any(n["mol_only"] and n["node_class"] in ("micro", "macro") for n in staged["nodes"]))
        conventions.append({"mode": mode, "label": label, "case_mode": mode == case.get("stage_mode"),
                            "macro": classes.count("macro"), "micro": classes.count("micro"),
                            "itc": classes.count("itc"), "pn": pn or "no stage",
                            "modifiers": _MODIFIER.findall(pn or ""), "reason": staged["stage_reason"],
                            "complete": staged["complete"]})
    sizes = [(les["diameter_mm"], n["node"]) for n in case["nodes"] for s in n["slides"] if s in results
             for les in results[s]["lesions"]]
    largest_mm, largest_node = max(sizes, default=(None, None))
    return {"reviewed": bool(events), "n_decisions": len(events), "n_sentinel": sum(sentinel),
            "n_examined": len(case["nodes"]), "largest_mm": largest_mm, "largest_node": largest_node,
            "methods": _methods(case, results), "extranodal_extension": EXTRANODAL_EXTENSION,
            "conventions": conventions}
