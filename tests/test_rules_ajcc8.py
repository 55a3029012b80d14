"""AJCC 8 deposit classes and patient pN, boundaries pinned exactly at 0.2 mm, 2.0 mm and 200 cells."""

import pytest

from micromets.errors import MicrometsError
from micromets.rules.ajcc8 import node_class, stage_patient_ajcc8


@pytest.mark.parametrize(
    ("diameter_mm", "n_cells", "expected"),
    [
        (None, None, "negative"),
        (0.0, None, "itc"),
        (0.2, None, "itc"),  # <= 0.2 mm is ITC
        (0.2000001, None, "micro"),
        (2.0, None, "micro"),  # <= 2.0 mm is micro
        (2.0000001, None, "macro"),
        (0.1, 200, "itc"),  # exactly 200 cells is not "more than 200"
        (0.1, 201, "micro"),
        (0.1, 199, "itc"),
        (0.5, 10, "micro"),  # size alone suffices
        (3.0, 0, "macro"),
    ],
)
def test_node_class_boundaries(diameter_mm, n_cells, expected):
    assert node_class(diameter_mm, n_cells) == expected


@pytest.mark.parametrize("bad", [-0.1, float("nan"), float("inf"), "1.0", True])
def test_node_class_rejects_bad_diameter(bad):
    with pytest.raises(MicrometsError, match="diameter"):
        node_class(bad)


@pytest.mark.parametrize("bad", [-1, 2.5])
def test_node_class_rejects_bad_cell_count(bad):
    with pytest.raises(MicrometsError, match="cell count"):
        node_class(0.1, bad)


@pytest.mark.parametrize(
    ("classes", "sentinel_only", "expected"),
    [
        (["negative"] * 3, True, "pN0(sn)"),
        (["negative"] * 3, False, "pN0"),
        (["itc", "negative"], True, "pN0(i+)(sn)"),
        (["micro", "micro", "micro", "micro", "itc"], True, "pN1mi(sn)"),
        (["macro", "itc", "itc", "itc"], False, "pN1a"),  # ITC-only nodes do not count
        (["macro", "micro", "micro"], False, "pN1a"),
        (["macro"] + ["micro"] * 3, False, "pN2a"),
        (["macro"] * 9 + ["negative"] * 10, False, "pN2a"),
        (["macro"] * 10, False, "pN3a"),
        (["negative"] * 6, True, "pN0"),  # (sn) not used with 6 or more nodes examined
        (["negative"] * 5, True, "pN0(sn)"),
        ([], True, "pNX"),
    ],
)
def test_stage_patient_ajcc8(classes, sentinel_only, expected):
    assert stage_patient_ajcc8(classes, sentinel_only=sentinel_only) == expected


def test_molecular_only_nodes_fuse_and_ajcc_letter():
    mol_node = {"node_class": "micro", "histology_class": "negative", "mol_only": True}
    negative = {"node_class": "negative", "histology_class": "negative", "mol_only": False}
    itc = {"node_class": "itc", "histology_class": "itc", "mol_only": False}
    assert stage_patient_ajcc8([mol_node, negative], sentinel_only=False) == "pN1mi(mol+)"
    assert stage_patient_ajcc8([mol_node, negative], sentinel_only=False, molecular="ajcc") == "pN0(mol+)"
    assert stage_patient_ajcc8([mol_node, itc], sentinel_only=False, molecular="ajcc") == "pN0(i+)"
    macro = {"node_class": "macro", "histology_class": "macro", "mol_only": False}
    assert stage_patient_ajcc8([macro, negative], sentinel_only=False) == "pN1a"


def test_stage_rejects_unknown_class_and_mode():
    with pytest.raises(MicrometsError, match="unknown node class"):
        stage_patient_ajcc8(["tumour"])
    with pytest.raises(MicrometsError, match="molecular"):
        stage_patient_ajcc8(["negative"], molecular="x")
