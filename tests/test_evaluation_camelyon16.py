"""CAMELYON16 FROC / AUC on detections whose score is known by construction, with real reference outlines."""

import numpy as np
import pytest
import shapely

from micromets.errors import MicrometsError
from micromets.evaluation.camelyon16 import (
    evaluate_camelyon16,
    evaluation_mask,
    froc,
    read_detections_csv,
)

MPP = 0.243


def write_csv(path, rows):
    path.write_text("".join(f"{p},{x},{y}\n" for p, x, y in rows))


def lesion_points(reference):
    """One level-0 point inside every lesion of an evaluation mask: {label: (x, y)}."""
    points = {}
    for label in range(1, int(reference.labels.max()) + 1):
        rows, cols = np.nonzero(reference.labels == label)
        k = len(rows) // 2
        points[label] = (
            (reference.col0 + cols[k] + 0.5) * reference.downsample,
            (reference.row0 + rows[k] + 0.5) * reference.downsample,
        )
    return points


@pytest.fixture()
def synthetic_reference(tmp_path):
    """A tumour slide with 4 lesions that count (one of them two deposits 50 µm apart) and 1 ITC lesion."""
    from micromets.annotations import write_asap_xml

    px = 1 / MPP
    big = [shapely.Point(x, 20000).buffer(300 * px) for x in (10000, 20000, 30000)]  # 0.6 mm discs
    pair = [shapely.box(40000, 20000, 40000 + 200 * px, 20000 + 200 * px),
            shapely.box(40000 + 250 * px, 20000, 40000 + 450 * px, 20000 + 200 * px)]  # 50 µm gap: one lesion
    itc = [shapely.Point(50000, 30000).buffer(50 * px)]  # 0.1 mm: ITC
    ref = tmp_path / "ref"
    ref.mkdir()
    write_asap_xml(ref / "tumor_a.xml", big + pair + itc)
    centres = [(g.centroid.x, g.centroid.y) for g in big] + [(pair[0].centroid.x, pair[0].centroid.y)]
    return ref, centres, (50000, 30000)


def test_reference_lesions_merge_and_itc(synthetic_reference):
    from micromets.annotations import read_annotations

    ref, _, _ = synthetic_reference
    mask = evaluation_mask(read_annotations(ref / "tumor_a.xml").geometries_l0())
    assert mask.labels.max() == 5 and len(mask.itc_labels) == 1 and mask.n_lesions == 4


def test_perfect_detector_scores_one(tmp_path, synthetic_reference):
    ref, centres, _ = synthetic_reference
    det = tmp_path / "det"
    det.mkdir()
    write_csv(det / "tumor_a.csv", [(0.9, x, y) for x, y in centres])
    write_csv(det / "normal_b.csv", [])
    result = evaluate_camelyon16(det, ref)
    assert result["froc"] == 1.0
    assert result["auc"] == 1.0
    assert result["n_lesions"] == 4


def test_itc_only_detector_scores_zero_without_false_positives(tmp_path, synthetic_reference):
    ref, _, itc_centre = synthetic_reference
    det = tmp_path / "det"
    det.mkdir()
    write_csv(det / "tumor_a.csv", [(0.99, *itc_centre)])
    result = evaluate_camelyon16(det, ref)
    assert result["froc"] == 0.0
    assert result["slides"][0]["n_false_positives"] == 0


def test_false_positive_slides_lower_the_curve_as_by_hand(tmp_path, synthetic_reference):
    ref, centres, itc_centre = synthetic_reference
    det = tmp_path / "det"
    det.mkdir()
    # lesions hit at 0.9, 0.7, 0.5 (one missed); the ITC hit at 0.95 counts neither way
    write_csv(det / "tumor_a.csv", [(0.9, *centres[0]), (0.7, *centres[1]), (0.5, *centres[2]), (0.95, *itc_centre)])
    alone = evaluate_camelyon16(det, ref)
    # one slide, no false positives: sensitivity 3/4 at every FP rate
    assert alone["froc"] == pytest.approx(0.75)
    write_csv(det / "normal_1.csv", [(0.8, 100, 100)])
    write_csv(det / "normal_2.csv", [(0.6, 100, 100)])
    result = evaluate_camelyon16(det, ref)
    # by hand, 3 slides: thresholds .5 .6 .7 .8 .9 give (FP/slide, sensitivity)
    # (2/3, 3/4) (2/3, 2/4) (1/3, 2/4) (1/3, 1/4) (0, 1/4), then (0, 0)
    # at 1/4 FP: 1/4; at 1/2: 2/4; at 1, 2, 4, 8 (beyond 2/3): 3/4  →  mean = (0.25 + 0.5 + 4 * 0.75) / 6
    assert result["sensitivity_at"] == pytest.approx(
        {"0.25": 0.25, "0.5": 0.5, "1.0": 0.75, "2.0": 0.75, "4.0": 0.75, "8.0": 0.75}
    )
    assert result["froc"] == pytest.approx(0.625)
    assert result["auc"] == 1.0  # slide scores 0.95 > 0.8 > 0.6


def test_real_references_perfect_and_itc_only(tmp_path, shared_data):
    """Real CAMELYON16 outlines as reference: Tumor_001 (micro-metastases) and Tumor_017 (ITC only)."""
    from micromets.annotations import read_annotations

    ref = shared_data / "camelyon16_polygons"
    masks = {s: evaluation_mask(read_annotations(ref / f"{s}.json").geometries_l0()) for s in ("Tumor_001", "Tumor_017")}
    assert masks["Tumor_001"].n_lesions >= 1
    assert masks["Tumor_017"].n_lesions == 0 and masks["Tumor_017"].itc_labels
    det = tmp_path / "det"
    det.mkdir()
    points = lesion_points(masks["Tumor_001"])
    write_csv(det / "Tumor_001.csv", [(0.8, *points[k]) for k in points if k not in masks["Tumor_001"].itc_labels])
    write_csv(det / "Tumor_017.csv", [(0.7, *p) for p in lesion_points(masks["Tumor_017"]).values()])
    write_csv(det / "Normal_001.csv", [])
    perfect = evaluate_camelyon16(det, ref)
    assert perfect["froc"] == 1.0 and perfect["auc"] == 1.0
    assert perfect["slides"][1]["n_false_positives"] == 0  # ITC hits are not false positives
    write_csv(det / "Tumor_001.csv", [])
    assert evaluate_camelyon16(det, ref)["froc"] == 0.0


def test_froc_needs_lesions_and_bad_csv(tmp_path):
    with pytest.raises(MicrometsError, match="non-ITC"):
        froc(np.array([0.5]), np.array([]), 1)
    bad = tmp_path / "bad.csv"
    bad.write_text("probability,x,y\n0.5,1,2\n1.5,3,4\n")
    with pytest.raises(MicrometsError, match="outside"):
        read_detections_csv(bad)
    bad.write_text("0.5,1\n")
    with pytest.raises(MicrometsError, match="three"):
        read_detections_csv(bad)
    bad.write_text("0.5,1,2\nx,y,z\n")
    with pytest.raises(MicrometsError, match=":2:"):
        read_detections_csv(bad)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(MicrometsError, match="no detection CSV"):
        evaluate_camelyon16(empty, empty)
