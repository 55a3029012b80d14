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
