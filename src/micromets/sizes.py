"""Deposit sizes as people read them: the one function that prints a size in mm (CLI, report, viewer).

A size printed next to the AJCC 8 / CAMELYON17 boundaries (0.2 mm and 2.0 mm) must never be rounded onto or across
one: a 0.2003 mm deposit is a micrometastasis (> 0.2 mm), and "0.20 mm" reads as ITC. :func:`format_mm` prints
two decimals (three below 0.1 mm), and more, up to four, while the printed number would sit on a boundary the
value is not on; when even four decimals cannot tell (|size - boundary| < 0.00005 mm) it prints "> 0.20 mm" or
"< 0.20 mm". A size printed equal to a boundary therefore is that boundary (to the 4th decimal), so the class
printed beside it can be checked by eye in either convention (AJCC 8: 0.2 is ITC, 2.0 micro; CAMELYON17: 0.2
is micro, 2.0 macro). No deposit (None) prints "—", never "0.00 mm".
"""

from __future__ import annotations

from micromets.rules.ajcc8 import ITC_MAX_MM, MICRO_MAX_MM

#: The class boundaries a printed size must not be rounded onto or across (mm).
SIZE_BOUNDARIES_MM = (ITC_MAX_MM, MICRO_MAX_MM)
#: Most decimals printed near a boundary; closer than this the side is printed ("> 0.20 mm").
MAX_DECIMALS = 4
#: What a missing size (no deposit) prints.
NO_SIZE = "—"


def format_mm(mm: float | None, unit: bool = True) -> str:
    """A deposit size in mm for people: ``0.9067`` → ``"0.91 mm"``, ``0.0524`` → ``"0.052 mm"``,
    ``0.2003`` → ``"0.2003 mm"``, ``0.20001`` → ``"> 0.20 mm"``, ``0.1996`` → ``"0.1996 mm"``, ``None`` → ``"—"``.

    ``unit=False`` leaves out the " mm" (table columns that name the unit in their header)."""
    if mm is None:
        return NO_SIZE
    mm = float(mm)
    suffix = " mm" if unit else ""
    decimals = 2 if mm >= 0.1 else 3
    for boundary in SIZE_BOUNDARIES_MM:
        if mm == boundary:
            continue
        above = mm > boundary
        while decimals < MAX_DECIMALS and _crosses(mm, decimals, boundary, above):
            decimals += 1
        if _crosses(mm, decimals, boundary, above):
            return f"{'>' if above else '<'} {boundary:.2f}{suffix}"
    return f"{mm:.{decimals}f}{suffix}"


def _crosses(mm: float, decimals: int, boundary: float, above: bool) -> bool:
    """Whether ``mm`` printed with ``decimals`` reads as on (or across) ``boundary`` from its true side."""
    printed = float(f"{mm:.{decimals}f}")
    return printed <= boundary if above else printed >= boundary
