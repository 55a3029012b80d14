"""Evaluation with the CAMELYON challenges' semantics: CAMELYON16 lesion FROC and slide AUC (``camelyon16``),
CAMELYON17 patient pN quadratic-weighted kappa (``camelyon17``)."""
