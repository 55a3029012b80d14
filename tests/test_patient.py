"""Patient staging in both modes, with the reason sentence naming counts and evidence."""

import pytest

from micromets.errors import MicrometsError
from micromets.node import classify_node
from micromets.patient import stage_patient


def node(node_id, node_class, largest_mm=0.0, osna=None):
    result = {"slide_id": f"s{node_id}", "node_class": node_class, "largest_deposit_mm": largest_mm, "stain": "he"}
    return {"node": node_id, **classify_node([result], osna)}


def test_camelyon17_mode_with_reason():
    nodes = [node("1", "macro", 3.1), node("2", "micro", 0.9), node("3", "itc", 0.1), node("4", "negative")]
    stage, reason = stage_patient(nodes)
    assert stage == "pN1"
    assert "2 of 4 nodes positive (1 macro, 1 micro)" in reason
    assert "1 with ITC only" in reason
    assert "3.10 mm in node 1" in reason and "slide s1 (he)" in reason


def test_ajcc8_mode_sentinel_and_molecular():
    nodes = [node("1", "negative", osna=800), node("2", "negative")]
    stage, reason = stage_patient(nodes, "ajcc8")
    assert stage == "pN1mi(mol+)(sn)"
    assert "decided by OSNA" in reason and "(mol+): node 1" in reason
    nodes[1]["sentinel"] = False
    assert stage_patient(nodes, "ajcc8")[0] == "pN1mi(mol+)"
    assert stage_patient(nodes, "ajcc8", molecular="ajcc")[0] == "pN0(mol+)"


def test_plain_class_strings_and_errors():
    assert stage_patient(["negative", "itc"])[0] == "pN0(i+)"
    with pytest.raises(MicrometsError, match="mode"):
        stage_patient(["negative"], "tnm9")
    with pytest.raises(MicrometsError):
        stage_patient([])


def test_total_tumour_load_in_reason_and_summary():
    from micromets.patient import tumour_load

    nodes = [node("1", "negative", osna=9000), node("2", "micro", 0.5, osna=7000), node("3", "negative")]
    load = tumour_load(nodes)
    assert load == {"ttl_copies_per_ul": 16000.0, "ttl_cutoff_copies_per_ul": 15000.0, "ttl_high_risk": True,
                    "n_nodes": 2}
    stage, reason = stage_patient(nodes)
    assert stage == "pN1"  # the OSNA "++" node counts as a macrometastasis (stronger finding wins)
    assert "total tumour load 16,000 copies/µL over 2 sentinel node(s), above the 15,000 cut-off" in reason
    assert "not above the 20,000" in stage_patient(nodes, ttl_cutoff_copies_per_ul=20000)[1]
    assert tumour_load([node("1", "micro", 1.0)]) is None
