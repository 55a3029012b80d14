"""The bench's scoring against hand-computed expectations for a perfect and an empty detector.

The tiny phantom set is built from the CC0 CAMELYON16 tiles bundled in src/micromets/data/tiles (tumor_001,
tumor_004, tumor_064). No model runs here: "perfect" reports the ground truth itself, "empty" reports nothing,
both through the same scoring code as real pipeline results.
"""

import json
from pathlib import Path

import numpy as np
import pytest
import shapely

from micromets.bench import markdown, read_truths, score, truth_result
from micromets.phantom.build import build_phantom

TILES = Path(__file__).resolve().parents[1] / "src" / "micromets" / "data" / "tiles"

MPP = 1.944  # coarse phantoms: the scoring works in level-0 px and mm whatever the resolution


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory):
    """A: negative; B: micro 0.8 mm + ITC 0.12 mm; C: macro 2.3 mm. Patients p1 = A + B (pN1mi), p2 = C (pN1)."""
    out = tmp_path_factory.mktemp("tiny")
    for name, patient, node, lesions, size in (("a", "p1", "1", "none", (1.5, 1.2)),
                                               ("b", "p1", "2", "micro:1@0.8,itc:1@0.12", (2.4, 2.0)),
                                               ("c", "p2", "1", "macro:1@2.3", (3.8, 3.4))):
        build_phantom(out, TILES / "normal", TILES / "tumor", 0.243, lesions, size, MPP, seed=7, name=name,
                      patient=patient, node=node)
    return read_truths(out / "manifest.csv")


def test_truths_read_back_from_the_manifest_and_xml(tiny_set):
    assert [t.name for t in tiny_set] == ["a", "b", "c"]
    assert [t.node_class for t in tiny_set] == ["negative", "micro", "macro"]
    assert sorted(tiny_set[1].classes) == ["itc", "micro"]
    assert sorted(tiny_set[1].diameters_mm) == [0.12, 0.8]


def test_perfect_detector_scores_are_the_best_possible(tiny_set):
    report = score(tiny_set, [truth_result(t) for t in tiny_set])
    assert report["n_false_positives"] == 0
    assert report["froc"] == pytest.approx(1.0)
    assert report["slide_auc"] == pytest.approx(1.0)
    sens = report["sensitivity_at_1fp_per_slide"]
    assert [sens[c]["n_lesions"] for c in ("itc", "micro", "macro")] == [1, 1, 1]
    assert [sens[c]["sensitivity"] for c in ("itc", "micro", "macro")] == [1.0, 1.0, 1.0]
    for cls in ("itc", "micro", "macro"):
        assert abs(report["diameter_error"][cls]["mean_error_mm"]) < 1e-9
    assert report["node_confusion"]["rows_truth_cols_predicted"] == [[1, 0, 0, 0], [0, 0, 0, 0], [0, 0, 1, 0],
                                                                     [0, 0, 0, 1]]
    assert report["node_accuracy"] == 1.0
    assert report["patients"] == {"p1": {"truth": "pN1mi", "predicted": "pN1mi"},
                                  "p2": {"truth": "pN1", "predicted": "pN1"}}
    assert report["kappa"] == 1.0


def test_empty_detector_scores_are_the_worst_possible(tiny_set):
    report = score(tiny_set, [truth_result(t, detected=False) for t in tiny_set])
    assert report["n_false_positives"] == 0
    assert report["froc"] == 0.0
    assert report["slide_auc"] == pytest.approx(0.5)  # every slide scores 0: all ties
    assert [report["sensitivity_at_1fp_per_slide"][c]["sensitivity"] for c in ("itc", "micro", "macro")] == [0, 0, 0]
    assert all(report["diameter_error"][c]["n"] == 0 for c in ("itc", "micro", "macro"))
    assert report["node_confusion"]["rows_truth_cols_predicted"] == [[1, 0, 0, 0], [0, 0, 0, 0], [1, 0, 0, 0],
                                                                     [1, 0, 0, 0]]
    assert report["node_accuracy"] == pytest.approx(1 / 3)
    # truth (pN1mi, pN1) vs (pN0, pN0): observed and chance-expected quadratic disagreement are both 13/16
    assert report["kappa"] == pytest.approx(0.0, abs=1e-12)


def test_a_false_positive_above_the_true_lesions_costs_the_quarter_fp_operating_point(tiny_set):
    """One FP (probability 1.0) on slide A, true lesions at 0.8: 1/3 FP per slide once the FP is let in.

    FROC: at 1/4 FP/slide only detections above 1.0 count (sensitivity 0); at 1/2 … 8 the FP is allowed and both
    non-ITC lesions are found (sensitivity 1): mean = 5/6. Sensitivity at <= 1 FP/slide stays 1 for every class.
    """
    results = [truth_result(t) for t in tiny_set]
    for result in results:
        for lesion in result["lesions"]:
            lesion["max_probability"] = 0.8
    fp = shapely.Point(200, 200).buffer(100)
    results[0] = {"node_class": "micro", "largest_deposit_mm": 0.39,
                  "lesions": [{"l0_outline": [np.asarray(fp.exterior.coords).tolist()], "diameter_mm": 0.39,
                               "max_probability": 1.0, "class": "micro"}]}
    report = score(tiny_set, results)
    assert report["n_false_positives"] == 1
    assert report["froc"] == pytest.approx(5 / 6)
    assert [report["sensitivity_at_1fp_per_slide"][c]["sensitivity"] for c in ("itc", "micro", "macro")] == [1, 1, 1]
    # slide scores A 1.0 (negative), B 0.8, C 0.8: the negative slide ranks first, AUC = 0
    assert report["slide_auc"] == pytest.approx(0.0)
    assert report["node_confusion"]["rows_truth_cols_predicted"][0] == [0, 0, 1, 0]


def test_unconfirmed_candidates_are_ranked_but_not_counted(tiny_set):
    """An unconfirmed candidate on negative slide A (confirmed probability 0.3 < the true lesions' 0.8) is a
    false-positive candidate, but no counted lesion: node classes stay right, the FROC is not hurt (it ranks below
    every true lesion), and the slide AUC uses the confirmed probabilities."""
    results = [truth_result(t) for t in tiny_set]
    for result in results:
        for lesion in result["lesions"]:
            lesion["confirmed_probability"] = 0.8
    fp = shapely.Point(200, 200).buffer(100)
    results[0]["unconfirmed_lesions"] = [{"l0_outline": [np.asarray(fp.exterior.coords).tolist()], "diameter_mm": 0.39,
                                          "max_probability": 1.0, "confirmed_probability": 0.3, "class": "micro"}]
    report = score(tiny_set, results)
    assert report["n_false_positives"] == 1 and report["n_false_positive_lesions"] == 0
    assert report["froc"] == pytest.approx(1.0) and report["slide_auc"] == pytest.approx(1.0)
    assert report["node_accuracy"] == 1.0


def test_markdown_table_lists_every_mode_and_speed_row(tiny_set):
    acc = score(tiny_set, [truth_result(t) for t in tiny_set])
    report = {"date": "2026-01-01T00:00:00+00:00", "micromets": "0.1.0", "elapsed_s": 1.0,
              "machine": {"cpus": 2}, "phantoms": {"n_slides": 3, "tile_sources": {"/x/normal": ["tumor_004"]}},
              "model": {"name": "perfect", "version": "-", "input_mpp": 0.5, "patch_px": 96},
              "modes": {"perfect": acc}, "skipped_modes": {}, "speed": [], "baseline": []}
    text = markdown(report)
    assert "| perfect | 1.000 | 1.000 | 1.000 | 1.000 | 1.000 | 1.000 | 1.000 |" in text
    assert "- phantom tiles `normal/` from: tumor_004" in text


def test_bench_runs_the_real_pipeline_and_baseline_on_a_tiny_set(tmp_path):
    """End to end on one small phantom with the shipped model: files, speed rows, baseline, memory are filled in.

    Phantom tissue from the bundled CAMELYON16 tiles, which the shipped model was trained on: this test checks the
    bench's plumbing, not the model's accuracy.
    """
    import json

    from micromets.bench import run_bench

    build_phantom(tmp_path / "set", TILES / "normal", TILES / "tumor", 0.243, "micro:1@0.5", (1.2, 1.0), 0.972,
                  seed=3, name="tiny")
    report = run_bench(tmp_path / "set", out_dir=tmp_path / "results", work_dir=tmp_path / "work", log=lambda m: None)
    saved = json.loads((tmp_path / "results").glob("*.json").__next__().read_text())
    assert saved["phantoms"]["n_slides"] == 1 and set(saved["modes"]) == {"thorough"}
    assert saved["modes"]["thorough"]["n_slides"] == 1
    [speed] = report["speed"]
    assert speed["slide"] == "tiny" and speed["n_patches"] > 0 and speed["peak_rss_mb"] > 50
    [base] = report["baseline"]
    assert base["n_patches"] == speed["n_patches"] and base["speedup_of_thorough"] > 0
    assert (tmp_path / "results").glob("*.md").__next__().read_text().startswith("# micromets bench")


def test_every_default_node_can_be_laid_out():
    """The default set's lesions fit their nodes (bench_p8's 2.4 mm macro did not fit 3.6 x 3.2 mm)."""
    from micromets.bench import DEFAULT_SET, PHANTOM_STROMA
    from micromets.phantom.layout import make_layout, parse_lesions

    for _, _, lesions, size_mm, seed, _role in DEFAULT_SET:
        layout = make_layout(size_mm, 0.243, parse_lesions(lesions), seed, stroma=PHANTOM_STROMA)
        assert len(layout.lesions) == sum(spec.size_class != "none" for spec in parse_lesions(lesions))


def test_the_report_says_whether_the_model_trained_on_the_phantom_stroma():
    from micromets.bench import stroma_and_fat_seen
    from micromets.model import default_model_dir

    shipped = json.loads((default_model_dir() / "model.json").read_text())
    assert stroma_and_fat_seen(shipped).startswith("unseen")  # the default holds the bench's stroma and fat back
    binary = json.loads((default_model_dir().parent / "cnn-ln" / "model.json").read_text())
    assert stroma_and_fat_seen(binary).startswith("SEEN: the model trained on crc_tiles/kather2016")
    held = {"held_back": ["crc_tiles/kather2016/02_STROMA", "crc_tiles/kather2016/07_ADIPOSE"],
            "training_data": [{"path": "crc_tiles"}]}
    assert stroma_and_fat_seen(held).startswith("unseen")
    assert stroma_and_fat_seen({"training_data": [{"path": "camelyon16_patches"}]}).startswith("not in")
