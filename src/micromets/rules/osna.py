"""OSNA (one-step nucleic acid amplification) CK19 mRNA: node class from copies/µL, and total tumour load.

Sources:

* Cut-offs: Tsujimoto M et al., "One-step nucleic acid amplification for intraoperative detection of lymph node
  metastasis in breast cancer patients", Clin Cancer Res 2007;13:4807-4816: ``< 250`` copies/µL negative,
  ``250-5,000`` "+" (corresponds to a micrometastasis), ``> 5,000`` "++" (macrometastasis).
  Boundaries: 250 is "+", 5,000 is "+", 5,000.1 is "++".
* Total tumour load (TTL): the sum of CK19 copies/µL over all sentinel nodes of a patient. Peg V et al.,
  "Intraoperative molecular analysis of total tumor load in sentinel lymph node: a new predictor of axillary
  status in early breast cancer patients", Breast Cancer Res Treat 2013;139:87-93: TTL ``> 15,000`` copies/µL
  predicts involvement of non-sentinel nodes (``<= 15,000``: low risk). The cut-off is a parameter.
"""

from __future__ import annotations

import math

from micromets.errors import MicrometsError

#: Below this (copies/µL) the node is negative.
NEGATIVE_BELOW = 250.0
#: Up to and including this (copies/µL) a positive node is "+" (micrometastasis); above it "++" (macro).
MICRO_MAX = 5000.0
#: Peg et al. 2013: TTL above this (copies/µL) → risk of non-sentinel node involvement.
TTL_CUTOFF = 15000.0

_LABELS = {"negative": "-", "micro": "+", "macro": "++"}


def _check(copies_per_ul) -> float:
    if isinstance(copies_per_ul, bool) or not isinstance(copies_per_ul, (int, float)):
        raise MicrometsError(f"OSNA CK19 copies/µL must be a number, got {copies_per_ul!r}")
    if not math.isfinite(copies_per_ul) or copies_per_ul < 0:
        raise MicrometsError(f"OSNA CK19 copies/µL must be a finite number >= 0, got {copies_per_ul!r}")
    return float(copies_per_ul)


def osna_class(copies_per_ul: float) -> str:
    """Node class from CK19 mRNA copies/µL: ``"negative"`` (< 250), ``"micro"`` (250-5,000), ``"macro"`` (> 5,000)."""
    copies = _check(copies_per_ul)
    if copies < NEGATIVE_BELOW:
        return "negative"
    if copies <= MICRO_MAX:
        return "micro"
    return "macro"


def osna_label(copies_per_ul: float) -> str:
    """The OSNA report label: ``"-"``, ``"+"`` or ``"++"``."""
    return _LABELS[osna_class(copies_per_ul)]


def total_tumour_load(copies_per_ul: list[float]) -> float:
    """TTL: the sum of CK19 copies/µL over the sentinel nodes of one patient."""
    return float(sum(_check(c) for c in copies_per_ul))


def ttl_high_risk(ttl_copies_per_ul: float, cutoff: float = TTL_CUTOFF) -> bool:
    """True when the TTL is above ``cutoff`` (Peg et al. 2013: > 15,000 copies/µL → non-sentinel risk)."""
    return _check(ttl_copies_per_ul) > _check(cutoff)
