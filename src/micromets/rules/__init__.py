"""Clinical rules, one module per source: AJCC 8 breast (``ajcc8``), the CAMELYON17 challenge (``camelyon17``) and
OSNA CK19 mRNA molecular staging (``osna``). Each module cites its source and states its boundary conventions."""

#: Node classes from weakest to strongest (CAMELYON17 labels, used everywhere in micromets).
NODE_CLASSES = ("negative", "itc", "micro", "macro")


def node_class_rank(node_class: str) -> int:
    """Strength of a node class (0 negative … 3 macro); raises ``MicrometsError`` for an unknown name."""
    from micromets.errors import MicrometsError

    try:
        return NODE_CLASSES.index(node_class)
    except ValueError:
        raise MicrometsError(
            f"unknown node class {node_class!r} (expected one of {', '.join(NODE_CLASSES)})"
        ) from None


def check_deposit(diameter_mm, n_cells) -> None:
    """Raise ``MicrometsError`` unless ``diameter_mm`` is a finite number >= 0 and ``n_cells`` None or a whole
    number >= 0 (the inputs of every rule module's ``node_class``)."""
    import math

    from micromets.errors import MicrometsError

    if isinstance(diameter_mm, bool) or not isinstance(diameter_mm, (int, float)) or not math.isfinite(diameter_mm):
        raise MicrometsError(f"deposit diameter must be a finite number of mm, got {diameter_mm!r}")
    if diameter_mm < 0:
        raise MicrometsError(f"deposit diameter must be >= 0 mm, got {diameter_mm!r}")
    if n_cells is not None and (isinstance(n_cells, bool) or int(n_cells) != n_cells or n_cells < 0):
        raise MicrometsError(f"tumour-cell count must be a whole number >= 0, got {n_cells!r}")
