"""OSNA CK19 copies/µL cut-offs (Tsujimoto 2007) and total tumour load (Peg 2013), boundaries pinned."""

import pytest

from micromets.errors import MicrometsError
from micromets.rules.osna import osna_class, osna_label, total_tumour_load, ttl_high_risk


@pytest.mark.parametrize(
    ("copies", "cls", "label"),
    [
        (0, "negative", "-"),
        (249.99, "negative", "-"),
        (250, "micro", "+"),
        (5000, "micro", "+"),
        (5000.01, "macro", "++"),
        (2.4e6, "macro", "++"),
    ],
)
def test_osna_cutoffs(copies, cls, label):
    assert osna_class(copies) == cls
    assert osna_label(copies) == label


@pytest.mark.parametrize("bad", [-1, -0.001, float("nan"), float("inf"), "300", None])
def test_osna_rejects_bad_copies(bad):
    with pytest.raises(MicrometsError, match="copies"):
        osna_class(bad)


def test_total_tumour_load_and_cutoff():
    ttl = total_tumour_load([10000, 5000, 0])
    assert ttl == 15000
    assert not ttl_high_risk(ttl)  # <= 15,000 is low risk
    assert ttl_high_risk(15000.5)
    assert ttl_high_risk(ttl, cutoff=14999)
    with pytest.raises(MicrometsError):
        total_tumour_load([100, -5])
