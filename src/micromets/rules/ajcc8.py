"""AJCC 8th edition breast cancer: lymph-node deposit class and pathological regional node category (pN).

Source: Amin MB et al. (eds.), AJCC Cancer Staging Manual, 8th ed., Springer 2017, chapter 48 "Breast",
Table "Definition of Regional Lymph Nodes - Pathological (pN)"; the modifiers as in the CAP protocol
"Invasive Carcinoma of the Breast" (2020+), which follows AJCC 8.

Deposit (one lesion; a node takes the class of its largest deposit):

* isolated tumour cells (ITC): largest dimension ``<= 0.2 mm``, or fewer than 200 cells in one cross-section;
* micrometastasis: ``> 0.2 mm`` and/or ``> 200`` cells, and ``<= 2.0 mm``;
* macrometastasis: ``> 2.0 mm``.

Boundary conventions (AJCC wording, tested): exactly 0.2 mm is ITC, exactly 2.0 mm is a micrometastasis. A deposit
``<= 0.2 mm`` becomes a micrometastasis only when its cell count is known and ``> 200``; exactly 200 cells is not
"more than 200" and stays ITC (AJCC leaves 200 itself undefined: ITC says "< 200", micro says "> 200").

Patient pN (axillary nodes): nodes with ITC only are excluded from the positive count but counted as examined.

* pN0: no metastasis and no ITC; pN0(i+): ITC only; pN0(mol+): molecular (RT-PCR / OSNA) positive only,
  no ITC detected (see ``molecular`` below);
* pN1mi: micrometastases, none > 2.0 mm (any number of nodes);
* pN1a: 1-3 positive nodes, at least one metastasis > 2.0 mm;
* pN2a: 4-9 positive nodes, at least one deposit > 2.0 mm;
* pN3a: >= 10 positive nodes, at least one deposit > 2.0 mm;
* suffix ``(sn)`` when the classification rests on sentinel-node biopsy only; per AJCC 8 / CAP it is not used
  when 6 or more nodes were examined.
"""

from __future__ import annotations


from micromets.errors import MicrometsError
from micromets.rules import check_deposit, node_class_rank

#: Largest dimension of an ITC cluster (mm, inclusive).
ITC_MAX_MM = 0.2
#: Largest dimension of a micrometastasis (mm, inclusive).
MICRO_MAX_MM = 2.0
#: A deposit of MORE than this many cells is a micrometastasis whatever its size.
ITC_MAX_CELLS = 200
#: (sn) is not used when this many nodes or more were examined.
SN_SUFFIX_MAX_NODES = 6


def node_class(diameter_mm: float | None, n_cells: int | None = None) -> str:
    """AJCC 8 class of ONE deposit from its largest dimension (mm) and, if known, its tumour-cell count.

    ``diameter_mm=None`` means no deposit: ``"negative"``. Returns ``"negative" | "itc" | "micro" | "macro"``.
    """
    if diameter_mm is None:
        return "negative"
    check_deposit(diameter_mm, n_cells)
    if diameter_mm > MICRO_MAX_MM:
        return "macro"
    if diameter_mm > ITC_MAX_MM:
        return "micro"
    if n_cells is not None and n_cells > ITC_MAX_CELLS:
        return "micro"
    return "itc"


def _classes_and_flags(nodes) -> list[tuple[str, str, bool]]:
    """(fused class, histology class, molecular-only flag) per node; accepts node dicts or class strings."""
    out = []
    for node in nodes:
        if isinstance(node, str):
            node_class_rank(node)
            out.append((node, node, False))
            continue
        fused = node["node_class"]
        node_class_rank(fused)
        histology = node.get("histology_class") or fused
        node_class_rank(histology)
        out.append((fused, histology, bool(node.get("mol_only", False))))
    return out


def stage_patient_ajcc8(nodes, sentinel_only: bool = True, molecular: str = "fuse") -> str:
    """AJCC 8 pN category of a patient from its examined axillary nodes.

    Parameters
    ----------
    nodes : list of node dicts (``node.classify_node`` output: ``node_class``, ``histology_class``, ``mol_only``)
        or plain node-class strings.
    sentinel_only : bool
        Only sentinel nodes were examined: adds ``(sn)`` when fewer than 6 nodes were examined.
    molecular : ``"fuse"`` or ``"ajcc"``
        How a node positive only by its molecular (OSNA) result counts. ``"fuse"`` (default, micromets' node rule:
        the stronger finding wins) counts it at its molecular class and marks the stage ``(mol+)``, e.g.
        ``pN1mi(mol+)``; ``"ajcc"`` applies the AJCC 8 letter: molecular findings alone do not make a node
        positive, and a patient with no histological metastasis and no ITC but a molecular-positive node is
        ``pN0(mol+)``.

    Returns the category string, e.g. ``"pN1a(sn)"``; ``"pNX"`` when no node was examined.
    """
    if molecular not in ("fuse", "ajcc"):
        raise MicrometsError(f"molecular must be 'fuse' or 'ajcc', got {molecular!r}")
    rows = _classes_and_flags(nodes)
    if not rows:
        return "pNX"
    counted = [histology if (molecular == "ajcc" and mol_only) else fused for fused, histology, mol_only in rows]
    positive = [cls in ("micro", "macro") for cls in counted]
    n_positive = sum(positive)
    mol_positive = any(mol_only for _, _, mol_only in rows)
    if "macro" in counted:
        stage = "pN1a" if n_positive <= 3 else "pN2a" if n_positive <= 9 else "pN3a"
    elif n_positive:
        stage = "pN1mi"
    elif "itc" in counted:
        stage = "pN0(i+)"
    elif mol_positive:
        stage = "pN0(mol+)"
    else:
        stage = "pN0"
    if molecular == "fuse" and any(p and m for p, (_, _, m) in zip(positive, rows)):
        stage += "(mol+)"
    if sentinel_only and len(rows) < SN_SUFFIX_MAX_NODES:
        stage += "(sn)"
    return stage
