"""Fusion of a node's slides and its OSNA value: the stronger finding wins, and the evidence is named."""

import pytest

from micromets.errors import MicrometsError
from micromets.node import classify_node


def slide(slide_id, node_class, largest_mm, stain="he"):
    return {"slide_id": slide_id, "node_class": node_class, "largest_deposit_mm": largest_mm, "stain": stain}


def test_strongest_slide_decides():
    node = classify_node([slide("n1", "itc", 0.1), slide("n1ck", "micro", 0.6, "ihc"), slide("n1b", "micro", 0.4)])
    assert node["node_class"] == "micro"
    assert node["decided_by"] == "slide n1ck (ihc)"
    assert node["largest_deposit_mm"] == 0.6
    assert node["slides"] == ["n1", "n1ck", "n1b"]
    assert node["mol_only"] is False and node["osna_class"] is None


def test_osna_stronger_wins_and_is_flagged():
    node = classify_node([slide("n2", "itc", 0.15)], osna_copies_per_ul=6000)
    assert node["node_class"] == "macro"
    assert node["decided_by"] == "OSNA"
    assert node["histology_class"] == "itc"
    assert node["mol_only"] is True


def test_histology_wins_ties_and_stronger_histology():
    tie = classify_node([slide("n3", "micro", 1.0)], osna_copies_per_ul=300)
    assert tie["decided_by"] == "slide n3 (he)" and not tie["mol_only"]
    stronger = classify_node([slide("n4", "macro", 2.5)], osna_copies_per_ul=300)
    assert stronger["node_class"] == "macro" and stronger["osna_class"] == "micro"


def test_osna_only_node():
    node = classify_node([], osna_copies_per_ul=100)
    assert node["node_class"] == "negative" and node["decided_by"] == "OSNA" and not node["mol_only"]


def test_bad_node_inputs():
    with pytest.raises(MicrometsError):
        classify_node([])
    with pytest.raises(MicrometsError, match="copies"):
        classify_node([slide("n5", "negative", 0.0)], osna_copies_per_ul=-3)
    with pytest.raises(MicrometsError, match="node_class"):
        classify_node([{"slide_id": "x"}])
