"""One patient: its nodes → pN stage and a one-sentence reason, in ``camelyon17`` or ``ajcc8`` mode.

The rules themselves live in ``rules.camelyon17`` (the challenge's simplified pN) and ``rules.ajcc8``
(AJCC 8 breast pN with the (i+), (mol+) and (sn) modifiers); this module counts the evidence and words it.
"""

from __future__ import annotations

from micromets.errors import MicrometsError
from micromets.rules import NODE_CLASSES, node_class_rank
from micromets.rules import ajcc8, camelyon17
from micromets.rules.osna import TTL_CUTOFF, total_tumour_load, ttl_high_risk
from micromets.sizes import format_mm

MODES = ("camelyon17", "ajcc8")


def _node_dict(node, index: int) -> dict:
    if isinstance(node, str):
        return {"node": str(index), "node_class": node}
    if "node_class" not in node:
        raise MicrometsError(f"node {node.get('node', index)!r} has no 'node_class'")
    return node


def tumour_load(nodes: list[dict], cutoff_copies_per_ul: float = TTL_CUTOFF) -> dict | None:
    """OSNA total tumour load over the sentinel nodes that have an OSNA value, or None when none has.

    Returns ``{"ttl_copies_per_ul", "ttl_cutoff_copies_per_ul", "ttl_high_risk", "n_nodes"}``; high risk means
    TTL ``>`` the cut-off (default 15,000 copies/µL, Peg et al. 2013, see ``rules.osna``): non-sentinel nodes
    are likely involved.
    """
    copies = [
        n["osna_copies_per_ul"]
        for n in nodes
        if isinstance(n, dict) and n.get("osna_copies_per_ul") is not None and n.get("sentinel", True)
    ]
    if not copies:
        return None
    ttl = total_tumour_load(copies)
    return {
        "ttl_copies_per_ul": ttl,
        "ttl_cutoff_copies_per_ul": float(cutoff_copies_per_ul),
        "ttl_high_risk": ttl_high_risk(ttl, cutoff_copies_per_ul),
        "n_nodes": len(copies),
    }


def _reason(mode: str, stage: str, nodes: list[dict], load: dict | None) -> str:
    counts = {cls: sum(n["node_class"] == cls for n in nodes) for cls in NODE_CLASSES}
    n_positive = counts["micro"] + counts["macro"]
    parts = [
        f"{n_positive} of {len(nodes)} nodes positive ({counts['macro']} macro, {counts['micro']} micro), "
        f"{counts['itc']} with ITC only (not counted as positive)"
    ]
    strongest = max(
        range(len(nodes)),
        key=lambda i: (node_class_rank(nodes[i]["node_class"]), nodes[i].get("largest_deposit_mm") or 0.0),
    )
    top = nodes[strongest]
    if top["node_class"] != "negative":
        where = f"node {top.get('node', strongest)}"
        size = top.get("largest_deposit_mm")
        evidence = top.get("decided_by")
        detail = f"largest deposit {format_mm(size)}" if size else f"strongest finding {top['node_class']}"
        parts.append(f"{detail} in {where}" + (f", decided by {evidence}" if evidence else ""))
    mol = [str(n.get("node", i)) for i, n in enumerate(nodes) if n.get("mol_only")]
    if mol:
        parts.append(f"positive by OSNA only (mol+): node {', '.join(mol)}")
    if load is not None:
        risk = "above" if load["ttl_high_risk"] else "not above"
        parts.append(
            f"OSNA total tumour load {load['ttl_copies_per_ul']:,.0f} copies/µL over {load['n_nodes']} sentinel "
            f"node(s), {risk} the {load['ttl_cutoff_copies_per_ul']:,.0f} cut-off for non-sentinel involvement"
        )
    rule = "CAMELYON17 rule" if mode == "camelyon17" else "AJCC 8 rule"
    return f"{rule} → {stage}: " + "; ".join(parts) + "."


def stage_patient(
    nodes: list[dict],
    mode: str = "camelyon17",
    *,
    sentinel_only: bool | None = None,
    molecular: str = "fuse",
    ttl_cutoff_copies_per_ul: float = TTL_CUTOFF,
) -> tuple[str, str]:
    """pN stage of one patient and the reason in one sentence.

    Parameters
    ----------
    nodes : list of ``node.classify_node`` dicts (optionally with ``"node"`` id and ``"sentinel"`` flag) or
        node-class strings.
    mode : ``"camelyon17"`` (pN0, pN0(i+), pN1mi, pN1, pN2) or ``"ajcc8"`` (pN0 … pN3a with modifiers).
    sentinel_only : ajcc8 only; default: every node is sentinel unless a node says ``"sentinel": False``.
    molecular : ajcc8 only; ``"fuse"`` or ``"ajcc"``, see ``rules.ajcc8.stage_patient_ajcc8``.
    ttl_cutoff_copies_per_ul : OSNA total-tumour-load cut-off quoted in the reason (see :func:`tumour_load`).
    """
    if mode not in MODES:
        raise MicrometsError(f"unknown staging mode {mode!r} (expected camelyon17 or ajcc8)")
    rows = [_node_dict(n, i) for i, n in enumerate(nodes)]
    if not rows:
        raise MicrometsError("a patient needs at least one node to be staged")
    if mode == "camelyon17":
        stage = camelyon17.stage_patient([n["node_class"] for n in rows])
    else:
        if sentinel_only is None:
            sentinel_only = all(n.get("sentinel", True) for n in rows)
        stage = ajcc8.stage_patient_ajcc8(rows, sentinel_only=sentinel_only, molecular=molecular)
    return stage, _reason(mode, stage, rows, tumour_load(rows, ttl_cutoff_copies_per_ul))
