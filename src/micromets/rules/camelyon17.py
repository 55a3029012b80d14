"""The CAMELYON17 challenge rules: node classes in the challenge's wording and the simplified patient pN stage.

Source: CAMELYON17 challenge, "Evaluation" page (https://camelyon17.grand-challenge.org/Evaluation/), and
Bándi P et al., "From detection of individual metastases to classification of lymph node status at the patient
level: the CAMELYON17 challenge", IEEE Trans Med Imaging 2019;38:550-560.

Node classes (challenge wording):

* macro-metastasis: "greater than 2.0 mm";
* micro-metastasis: "greater than 0.2 mm or more than 200 cells, but smaller than 2.0 mm";
* ITC: "single tumour cells or a cluster of tumour cells smaller than 0.2 mm or less than 200 cells".

The wording leaves exactly 0.2 mm and exactly 2.0 mm (and exactly 200 cells) in no class. This module resolves
them toward the LARGER class (0.2 mm → micro, 2.0 mm → macro, 200 cells → micro): the alternative convention to
AJCC 8 (``rules.ajcc8``, where 0.2 mm is ITC and 2.0 mm is micro). Both are tested at the boundaries.

Patient stage (simplified pN; reproduces all 100 official training patients):

* pN0: all nodes negative; pN0(i+): only ITC (and negative) nodes;
* pN1mi: at least one micro-metastasis and no macro-metastasis;
* pN1: 1-3 positive nodes (micro + macro) with at least one macro-metastasis;
* pN2: 4 or more positive nodes with at least one macro-metastasis.
"""

from __future__ import annotations


from micromets.errors import MicrometsError
from micromets.rules import check_deposit, node_class_rank

#: Patient stages in the order of the challenge's kappa (weakest first).
STAGES = ("pN0", "pN0(i+)", "pN1mi", "pN1", "pN2")


def node_class(diameter_mm: float | None, n_cells: int | None = None) -> str:
    """Class of one deposit by the CAMELYON17 wording, boundaries resolved toward the larger class."""
    if diameter_mm is None:
        return "negative"
    check_deposit(diameter_mm, n_cells)
    if diameter_mm >= 2.0:
        return "macro"
    if diameter_mm >= 0.2 or (n_cells is not None and n_cells >= 200):
        return "micro"
    return "itc"


def stage_patient(node_classes: list[str]) -> str:
    """CAMELYON17 pN stage (``"pN0"`` … ``"pN2"``) from the node classes of one patient."""
    if not node_classes:
        raise MicrometsError("a patient needs at least one node to be staged")
    for cls in node_classes:
        node_class_rank(cls)
    n_macro = node_classes.count("macro")
    n_positive = n_macro + node_classes.count("micro")
    if n_macro:
        return "pN1" if n_positive <= 3 else "pN2"
    if n_positive:
        return "pN1mi"
    if "itc" in node_classes:
        return "pN0(i+)"
    return "pN0"


def with_modifiers(stage: str, *, n_nodes: int, sentinel_only: bool, mol_positive: bool) -> str:
    """The challenge's stage with the AJCC 8 modifiers it leaves out, for a synoptic report: ``(mol+)`` and ``(sn)``.

    The challenge scores the bare category (its only modifier is the ``(i+)`` of ``pN0(i+)``); the modifiers are
    added here as AJCC 8 / the CAP breast protocol define them (``rules.ajcc8``), in the same order:

    * ``(mol+)`` when ``mol_positive``: a node counted positive (micro or macro) is positive by its molecular
      (OSNA) result only;
    * ``(sn)`` when ``sentinel_only`` and fewer than ``ajcc8.SN_SUFFIX_MAX_NODES`` (6) nodes were examined;
      6 nodes or more: no ``(sn)`` (boundary as in AJCC 8).

    ``stage`` must be one of :data:`STAGES`.
    """
    from micromets.rules.ajcc8 import SN_SUFFIX_MAX_NODES

    if stage not in STAGES:
        raise MicrometsError(f"unknown CAMELYON17 stage {stage!r} (expected one of {', '.join(STAGES)})")
    if mol_positive:
        stage += "(mol+)"
    if sentinel_only and n_nodes < SN_SUFFIX_MAX_NODES:
        stage += "(sn)"
    return stage
