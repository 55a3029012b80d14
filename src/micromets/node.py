"""One lymph node: its slides (H&E and/or cytokeratin IHC) and an optional OSNA result → the node class.

Fusion rule (stated once, here):

1. Histology: the node's histological class is the strongest class over its slides (negative < itc < micro <
   macro); among slides of that class the one with the largest deposit decides, then the first listed.
2. Molecular: an OSNA CK19 copies/µL value gives a class by ``rules.osna`` (< 250 negative, 250-5,000 micro,
   > 5,000 macro).
3. The stronger finding wins. When OSNA is strictly stronger than histology, the node takes the OSNA class,
   ``decided_by`` is ``"OSNA"`` and the node is flagged ``mol_only`` (molecular-only positive: reported
   ``(mol+)``). On a tie histology decides (it sizes the deposit).
"""

from __future__ import annotations

from micromets.errors import MicrometsError
from micromets.rules import node_class_rank
from micromets.rules.osna import osna_class


def _slide_key(index: int, result: dict) -> tuple:
    try:
        rank = node_class_rank(result["node_class"])
    except KeyError:
        raise MicrometsError(f"slide result {result.get('slide_id', index)!r} has no 'node_class'") from None
    return rank, float(result.get("largest_deposit_mm") or 0.0), -index


def classify_node(slide_results: list[dict], osna_copies_per_ul: float | None = None) -> dict:
    """Class of one node from its slides' ``result.json`` dicts and an optional OSNA value (copies/µL).

    Returns ``{"node_class", "decided_by", "largest_deposit_mm", "osna_copies_per_ul", "osna_class",
    "histology_class", "mol_only", "slides"}``; ``decided_by`` is ``"slide <id> (<stain>)"`` or ``"OSNA"``.
    """
    if not slide_results and osna_copies_per_ul is None:
        raise MicrometsError("a node needs at least one slide result or an OSNA value")
    molecular = None if osna_copies_per_ul is None else osna_class(osna_copies_per_ul)
    histology, decided_by, largest_mm = None, None, None
    if slide_results:
        keys = [_slide_key(i, r) for i, r in enumerate(slide_results)]
        best = max(range(len(slide_results)), key=keys.__getitem__)
        chosen = slide_results[best]
        histology = chosen["node_class"]
        decided_by = f"slide {chosen.get('slide_id', best)} ({chosen.get('stain', 'he')})"
        sizes = [r["largest_deposit_mm"] for r in slide_results if r.get("largest_deposit_mm") is not None]
        largest_mm = max(sizes, default=None)  # None: no deposit on any slide (a negative node has no size)
    mol_only = molecular is not None and (histology is None or node_class_rank(molecular) > node_class_rank(histology))
    return {
        "node_class": molecular if mol_only else histology,
        "decided_by": "OSNA" if mol_only else decided_by,
        "largest_deposit_mm": largest_mm,
        "osna_copies_per_ul": None if osna_copies_per_ul is None else float(osna_copies_per_ul),
        "osna_class": molecular,
        "histology_class": histology,
        "mol_only": bool(mol_only and molecular != "negative"),
        "slides": [r.get("slide_id", str(i)) for i, r in enumerate(slide_results)],
    }
