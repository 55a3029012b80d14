"""CAMELYON17 node wording (boundaries toward the larger class) and the challenge's patient rule."""

import pytest

from micromets.errors import MicrometsError
from micromets.rules.camelyon17 import node_class, stage_patient, with_modifiers


@pytest.mark.parametrize(
    ("diameter_mm", "n_cells", "expected"),
    [
        (None, None, "negative"),
        (0.1999, None, "itc"),
        (0.2, None, "micro"),
        (1.9999, None, "micro"),
        (2.0, None, "macro"),
        (0.1, 199, "itc"),
        (0.1, 200, "micro"),
    ],
)
def test_camelyon17_node_wording(diameter_mm, n_cells, expected):
    assert node_class(diameter_mm, n_cells) == expected


@pytest.mark.parametrize(
    ("classes", "expected"),
    [
        (["negative"] * 5, "pN0"),
        (["itc", "negative", "itc", "negative", "negative"], "pN0(i+)"),
        (["micro", "itc", "negative", "negative", "negative"], "pN1mi"),
        (["micro"] * 5, "pN1mi"),
        (["macro", "negative", "negative", "negative", "negative"], "pN1"),
        (["macro", "micro", "micro", "itc", "itc"], "pN1"),  # ITC not positive: 3 positive nodes
        (["macro", "micro", "micro", "micro", "negative"], "pN2"),
        (["macro"] * 5, "pN2"),
    ],
)
def test_camelyon17_patient_rule(classes, expected):
    assert stage_patient(classes) == expected


def test_camelyon17_rejects_bad_input():
    with pytest.raises(MicrometsError):
        stage_patient([])
    with pytest.raises(MicrometsError, match="unknown node class"):
        stage_patient(["Macro"])
    with pytest.raises(MicrometsError):
        node_class(-1.0)


@pytest.mark.parametrize(
    ("stage", "n_nodes", "sentinel_only", "mol_positive", "expected"),
    [
        ("pN1mi", 3, True, False, "pN1mi(sn)"),
        ("pN1mi", 5, True, False, "pN1mi(sn)"),
        ("pN1mi", 6, True, False, "pN1mi"),  # 6 nodes examined: no (sn), as in AJCC 8
        ("pN1", 2, False, False, "pN1"),  # axillary dissection: no (sn)
        ("pN1mi", 3, True, True, "pN1mi(mol+)(sn)"),  # modifier order as rules.ajcc8 writes it
        ("pN0(i+)", 3, True, False, "pN0(i+)(sn)"),
        ("pN2", 7, True, True, "pN2(mol+)"),
    ],
)
def test_camelyon17_stage_with_ajcc8_modifiers(stage, n_nodes, sentinel_only, mol_positive, expected):
    assert with_modifiers(stage, n_nodes=n_nodes, sentinel_only=sentinel_only, mol_positive=mol_positive) == expected


def test_camelyon17_modifiers_refuse_a_stage_not_of_the_challenge():
    with pytest.raises(MicrometsError, match="unknown CAMELYON17 stage"):
        with_modifiers("pN1a", n_nodes=3, sentinel_only=True, mol_positive=False)
