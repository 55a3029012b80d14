"""Counts as people write them: ``1 slide``, ``2 slides``, ``0 slides`` (every count a command prints)."""


def counted(n: int, noun: str, plural: str | None = None) -> str:
    """``n`` with ``noun`` in the right number (``plural`` when adding an ``s`` is wrong)."""
    return f"{n} {noun if n == 1 else plural or noun + 's'}"
