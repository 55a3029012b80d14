"""Heatmaps: the coarse-screen candidates map onto the fine grid as documented, and fast mode runs end to end."""

import json
from pathlib import Path

import jsonschema
import numpy as np
import pytest

from micromets.heatmap import Heatmap, candidate_cells

REPO = Path(__file__).resolve().parents[1]
NODE2 = REPO / "demo" / "slides" / "node2.tiff"  # phantom node with one 0.9 mm micrometastasis


def _screen(h_prob: np.ndarray, cell_um: float = 128.0) -> Heatmap:
    return Heatmap(h_prob.astype(np.float32), h_prob > 0, cell_um, l0_mpp=0.25)


def test_candidates_are_the_fine_cells_centred_in_a_hot_coarse_cell():
    coarse = np.zeros((3, 3))
    coarse[1, 1] = 0.3
    # fine cells of 48 µm: centres (r + 0.5) * 48 µm fall in coarse row 1 ([128, 256) µm) for r = 3, 4 only
    got = candidate_cells(_screen(coarse), (8, 8), 48.0, threshold=0.3)
    want = np.zeros((8, 8), bool)
    want[3:5, 3:5] = True
    np.testing.assert_array_equal(got, want)


def test_threshold_is_inclusive_and_lower_scores_are_not_candidates():
    coarse = np.zeros((3, 3))
    at = float(np.float32(0.3))
    coarse[0, 0] = np.nextafter(np.float32(at), np.float32(0))  # just below
    coarse[2, 2] = at                                            # exactly at the threshold: a candidate
    got = candidate_cells(_screen(coarse), (8, 8), 48.0, threshold=at)
    assert not got[:5, :5].any()
    assert got[5:8, 5:8].all() and got.sum() == 9  # centres 264..360 µm lie in coarse row/col 2 ([256, 384))


@pytest.fixture(scope="module")
def fast_and_thorough(tmp_path_factory):
    from micromets.analyze import analyze_slide
    from micromets.model import Detector

    out = tmp_path_factory.mktemp("fast")
    detector = Detector.load()
    fast = analyze_slide(NODE2, out / "fast", mode="fast", detector=detector)
    thorough = analyze_slide(NODE2, out / "thorough", mode="thorough", detector=detector)
    return out, fast, thorough


def test_fast_mode_finds_the_micrometastasis_and_records_its_mode(fast_and_thorough):
    out, fast, thorough = fast_and_thorough
    schema = json.loads((REPO / "src" / "micromets" / "schemas" / "slide-result.schema.json").read_text())
    jsonschema.validate(fast, schema)
    assert fast["mode"] == "fast" and thorough["mode"] == "thorough"
    assert fast["model"]["screen"]["name"] == "micromets-coarse-screen"
    assert "screen" not in thorough["model"]
    assert fast["node_class"] == "micro"
    truth = json.loads(NODE2.with_suffix(".geojson").read_text())["features"][0]["properties"]["diameter_mm"]
    largest = max(fast["lesions"], key=lambda r: r["diameter_mm"])
    assert largest["diameter_mm"] == pytest.approx(truth, abs=0.3)


def test_fast_mode_scores_fewer_cells_and_keeps_unscored_tissue(fast_and_thorough):
    out, fast, thorough = fast_and_thorough
    assert fast["timing_s"]["n_screen_patches"] > 0
    assert fast["timing_s"]["n_patches"] < thorough["timing_s"]["n_patches"]
    assert fast["heatmap"]["shape"] == thorough["heatmap"]["shape"]
    h_fast = np.load(out / "fast" / "node2" / "heatmap.npy")
    h_thorough = np.load(out / "thorough" / "node2" / "heatmap.npy")
    scored = h_fast > 0
    # cells the fine model scored in fast mode carry the probability of thorough mode: the demo slide is
    # 0.486 µm/px, resampled to 0.5 µm/px, and a patch's pixels do not depend on the block (2 × 2 cells in fast
    # mode, 16 × 16 in thorough) it was read in; only onnxruntime's batch composition differs
    np.testing.assert_allclose(h_fast[scored], h_thorough[scored], atol=1e-3)
    assert ((h_thorough > 0) & ~scored).any()  # some tissue was left to the screen's judgement


def test_fast_mode_measures_the_micrometastasis_as_thorough_mode(fast_and_thorough):
    """Growing over each positive region scores it whole, so the deposit is outlined as in thorough mode, not
    cut off at the screen's candidates."""
    out, fast, thorough = fast_and_thorough
    big_fast = max(fast["lesions"], key=lambda r: r["diameter_mm"])
    big_thorough = max(thorough["lesions"], key=lambda r: r["diameter_mm"])
    assert big_fast["diameter_mm"] == pytest.approx(big_thorough["diameter_mm"], abs=1e-3)
    assert big_fast["area_mm2"] == pytest.approx(big_thorough["area_mm2"], rel=1e-3)


def test_unknown_mode_is_one_line_and_exit_2(tmp_path):
    import os
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "micromets", "analyze", str(NODE2), "--out", str(tmp_path),
                           "--mode", "quick"], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, PYTHONPATH=str(REPO / "src")))
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "--mode 'quick'" in done.stderr


def test_case_and_batch_commands_pass_the_mode_through(tmp_path):
    import shutil

    from typer.testing import CliRunner

    from micromets.cli import app

    case_dir = tmp_path / "case"
    case_dir.mkdir()
    shutil.copy(NODE2, case_dir / "node2.tiff")
    (case_dir / "manifest.csv").write_text("patient,node,slide_path\np1,2,node2.tiff\n")
    runner = CliRunner()
    cases = {}
    for spelling, args in {"new": ["--mode", "fast", "--rule", "ajcc8"],
                           "old": ["--scan-mode", "fast", "--mode", "ajcc8"]}.items():  # old: hidden aliases
        done = runner.invoke(app, ["case", str(case_dir / "manifest.csv"), "--out", str(tmp_path / spelling), *args])
        assert done.exit_code == 0, done.output
        result = json.loads((tmp_path / spelling / "p1" / "node2" / "result.json").read_text())
        assert result["mode"] == "fast" and result["node_class"] == "micro"
        cases[spelling] = json.loads((tmp_path / spelling / "p1" / "case.json").read_text())
    assert cases["new"]["stage_mode"] == "ajcc8" and cases["new"] == cases["old"]
    done = runner.invoke(app, ["batch", str(case_dir / "node2.tiff"), "--out", str(tmp_path / "batch-out"),
                               "--workers", "0", "--mode", "fast"])
    assert done.exit_code == 0, done.output
    result = json.loads(next((tmp_path / "batch-out").glob("node2*/result.json")).read_text())
    assert result["mode"] == "fast"
    done = runner.invoke(app, ["case", str(case_dir / "manifest.csv"), "--out", str(tmp_path / "x"),
                               "--scan-mode", "quick"])
    assert "--scan-mode 'quick'" in str(done.exception)  # MicrometsError: one line, exit 2 from `micromets`


def test_confirmation_windows_are_anchored_on_the_heatmap_grid(fast_and_thorough):
    """With the single offset 0 the confirmation re-reads each cell's own patch, so it reproduces the heatmap, except
    where the run's edge check dropped a lone hot cell to the mean of its 9 half-cell-shifted windows
    (:func:`rescore_edge_cells`); with those 9 windows, cells inside the 0.9 mm micrometastasis stay high."""
    from micromets.analyze import stain_sample
    from micromets.heatmap import confirmation_scores
    from micromets.model import Detector
    from micromets.slide import open_slide
    from micromets.tissue import tissue_mask

    out, _, thorough = fast_and_thorough
    h_prob = np.load(out / "thorough" / "node2" / "heatmap.npy")
    hot = np.argwhere(h_prob >= 0.9)[:6]
    cool = np.argwhere((h_prob > 0.05) & (h_prob < 0.3))[:6]
    cells = np.concatenate([hot, cool])
    detector = Detector.load()
    with open_slide(NODE2) as slide:
        detector.set_stain_reference(stain_sample(slide, tissue_mask(slide), detector.input_mpp, detector.patch_px))
        heatmap = Heatmap(h_prob, h_prob > 0, thorough["heatmap"]["cell_um"], slide.l0_mpp)
        own = confirmation_scores(slide, detector, heatmap, cells, offsets_cells=(0.0,))
        dense = confirmation_scores(slide, detector, heatmap, cells)
        inline = confirmation_scores(slide, detector, heatmap, cells, readers=0, block_cells=1)
    np.testing.assert_array_equal(inline.h_prob, dense.h_prob)  # read in the calling thread, one cell a block
    assert own.h_tissue.sum() == len(cells) and dense.h_tissue[tuple(cells.T)].all()
    own_p, dense_p, run_p = (h[tuple(cells.T)] for h in (own.h_prob, dense.h_prob, h_prob))
    dropped = np.abs(own_p - run_p) > 1e-3
    assert dropped.sum() <= 2  # the rest is the heatmap's own patch
    assert (own_p[dropped] >= 0.5).all() and np.allclose(run_p[dropped], dense_p[dropped], atol=1e-3)
    assert (run_p[dropped] < 0.5).all()
    assert (dense.h_prob[tuple(hot.T)] >= 0.5).all()


def test_a_lone_hot_cell_the_overlapping_windows_do_not_call_drops_and_a_deposit_keeps_its_outline():
    """The edge check of the heatmap (:func:`rescore_edge_cells`) on node 2's real heatmap: a lymphoid cell set
    to 0.9 by hand (a lone window that called normal tissue tumour) takes the mean of its 9 shifted windows and
    drops below 0.5; the 0.9 mm micrometastasis keeps every interior cell's value and loses no cell but edge cells
    whose windows do not call them; cells below the threshold are never touched."""
    from scipy import ndimage

    from micromets.analyze import stain_sample
    from micromets.heatmap import HeatmapTiming, compute_heatmap, rescore_edge_cells
    from micromets.model import Detector
    from micromets.slide import open_slide
    from micromets.tissue import tissue_mask

    detector = Detector.load()
    with open_slide(NODE2) as slide:
        tissue = tissue_mask(slide)
        detector.set_stain_reference(stain_sample(slide, tissue, detector.input_mpp, detector.patch_px))
        heatmap, _ = compute_heatmap(slide, tissue, detector)
        single = heatmap.h_prob.copy()
        hot = single >= 0.5
        deposit = ndimage.label(hot)[0] == np.argmax(np.bincount(ndimage.label(hot)[0].ravel())[1:]) + 1
        far = ~ndimage.binary_dilation(hot, iterations=3) & heatmap.h_tissue & (single > 0) & (single < 0.1)
        lone = tuple(np.argwhere(far)[len(np.argwhere(far)) // 2])
        heatmap.h_prob[lone] = 0.9
        timing = HeatmapTiming()
        rescore_edge_cells(slide, detector, heatmap, 0.5, timing)
    assert heatmap.h_prob[lone] < 0.5 and heatmap.h_prob[lone] != 0.9
    interior = ndimage.binary_erosion(hot, np.ones((3, 3), bool), border_value=0)
    np.testing.assert_array_equal(heatmap.h_prob[interior], single[interior])
    cold = ~hot
    cold[lone] = False
    np.testing.assert_array_equal(heatmap.h_prob[cold], single[cold])
    kept = deposit & (heatmap.h_prob >= 0.5)
    np.testing.assert_array_equal(heatmap.h_prob[kept], single[kept])
    assert kept.sum() >= 0.9 * deposit.sum() and timing.n_rescored >= 1 + (deposit & ~interior).sum()


def test_local_heatmap_windows_are_centred_on_its_cells(fast_and_thorough):
    """At a stride of one heatmap cell over a box on the heatmap's grid, the local map's windows are the heatmap's
    own patches (same probabilities); at a finer stride its cells are smaller and the deposit stays hot."""
    from micromets.analyze import stain_sample
    from micromets.heatmap import local_heatmap
    from micromets.model import Detector
    from micromets.slide import open_slide
    from micromets.tissue import tissue_mask

    out, _, thorough = fast_and_thorough
    h_prob = np.load(out / "thorough" / "node2" / "heatmap.npy")
    r, c = np.argwhere(h_prob >= 0.9)[0]
    detector = Detector.load()
    with open_slide(NODE2) as slide:
        detector.set_stain_reference(stain_sample(slide, tissue_mask(slide), detector.input_mpp, detector.patch_px))
        cell_um = thorough["heatmap"]["cell_um"]
        l0_cell = cell_um / slide.l0_mpp
        box = ((c - 1) * l0_cell, (r - 1) * l0_cell, (c + 2) * l0_cell, (r + 2) * l0_cell)
        same = local_heatmap(slide, detector, box, cell_um)
        fine = local_heatmap(slide, detector, box, cell_um / 6)
    assert same.h_prob.shape == (3, 3) and same.l0_origin == box[:2]
    np.testing.assert_allclose(same.h_prob, h_prob[r - 1:r + 2, c - 1:c + 2], atol=1e-3)
    assert fine.h_prob.shape == (18, 18) and fine.cell_um == pytest.approx(cell_um / 6)
    assert fine.h_prob[6:12, 6:12].mean() >= 0.5  # the hot cell, seen by windows shifted around its centre


@pytest.mark.parametrize("context_mpp", [1.5, 0.7])  # a cell is 32 px of it (read by blocks), or 68.6 (alone)
def test_context_scores_are_the_field_centred_on_each_cell(tmp_path, context_mpp):
    """context_scores gives each cell the context model's score of the field of its own size centred on the cell's
    centre, read at its own µm/px, whether neighbouring cells share one read or not."""
    from micromets.analyze import stain_sample
    from micromets.heatmap import context_scores
    from micromets.model import Detector
    from micromets.slide import open_slide
    from micromets.tiles import tile_grid
    from micromets.tissue import tissue_mask

    from conftest import default_with_context

    detector = Detector.load(default_with_context(tmp_path, "coarse", context_mpp))
    context = detector.context
    assert context.input_mpp == context_mpp and context.cell_um == pytest.approx(32 * context_mpp)
    with open_slide(NODE2) as slide:
        tissue = tissue_mask(slide)
        detector.set_stain_reference(stain_sample(slide, tissue, detector.input_mpp, detector.patch_px))
        grid = tile_grid(slide, tissue, 48.0)
        heatmap = Heatmap(np.zeros(grid.shape, np.float32), grid.h_tissue, 48.0, slide.l0_mpp)
        cells = np.argwhere(grid.h_tissue)
        mid = cells[len(cells) // 2]
        h_rc = np.array([mid, mid + (0, 1), mid + (1, 0), mid + (3, -1), cells[len(cells) // 5],
                         cells[4 * len(cells) // 5]])
        got = context_scores(slide, context, heatmap, h_rc)
        centres = heatmap.h_centres_l0(h_rc)
        half_l0 = context.cell_um / 2 / slide.l0_mpp
        want = context.predict(np.stack([slide.read_window(x - half_l0, y - half_l0, 32, 32, context_mpp)
                                         for x, y in centres]))
    # node 2's level 1 is 1.9995× level 0, not 2×: a field cut from a block's read lies up to a level pixel from
    # the same field read alone, which moves this 32 px network by up to 0.02
    np.testing.assert_allclose(got, want, atol=0.03)
    assert got.std() > 0.01  # the fields differ: a test that would see cells swapped


def test_context_check_keeps_a_region_the_context_model_calls_anywhere_and_lowers_the_others(tmp_path):
    """On node 2's real heatmap with a lone hot cell set by hand far from the deposit: a positive region in which
    the context model calls at least one cell's field tumour keeps every value; every cell of any other region
    takes min(own, context), below the threshold; cells below it are untouched; a detector without a context
    model changes nothing."""
    from scipy import ndimage

    from micromets.analyze import stain_sample
    from micromets.heatmap import HeatmapTiming, compute_heatmap, context_check, context_scores
    from micromets.model import Detector
    from micromets.slide import open_slide
    from micromets.tissue import tissue_mask

    from conftest import default_with_context

    detector = Detector.load(default_with_context(tmp_path, "coarse", 1.0))
    with open_slide(NODE2) as slide:
        tissue = tissue_mask(slide)
        detector.set_stain_reference(stain_sample(slide, tissue, detector.input_mpp, detector.patch_px))
        heatmap, _ = compute_heatmap(slide, tissue, detector)
        far = ~ndimage.binary_dilation(heatmap.h_prob >= 0.5, iterations=3) & heatmap.h_tissue
        heatmap.h_prob[tuple(np.argwhere(far)[len(np.argwhere(far)) // 2])] = 0.9
        own = heatmap.h_prob.copy()
        hot = own >= 0.5
        around = np.zeros_like(own)
        around[hot] = context_scores(slide, detector.context, heatmap, np.argwhere(hot))
        timing = HeatmapTiming()
        context_check(slide, detector, heatmap, 0.5, timing)
        plain = Detector.load(REPO / "src" / "micromets" / "models" / "cnn-ln")  # no context model
        unchanged = Heatmap(own.copy(), heatmap.h_tissue, heatmap.cell_um, heatmap.l0_mpp)
        context_check(slide, plain, unchanged, 0.5)
    regions, n = ndimage.label(hot, np.ones((3, 3), bool))
    called = [k for k in range(1, n + 1) if around[regions == k].max() >= 0.5]
    assert timing.n_context == hot.sum() and 0 < len(called) < n  # both kinds of region are there
    for k in range(1, n + 1):
        cells = regions == k
        want = own[cells] if k in called else np.minimum(own[cells], around[cells])
        np.testing.assert_array_equal(heatmap.h_prob[cells], want)
        assert (k in called) == (heatmap.h_prob[cells] >= 0.5).any()
    np.testing.assert_array_equal(heatmap.h_prob[~hot], own[~hot])
    np.testing.assert_array_equal(unchanged.h_prob, own)


@pytest.mark.parametrize("context, message", [
    ("context", "context needs a folder (a model folder inside this one)"),
    ({"folder": "nowhere"}, "not a model folder (needs model.onnx and model.json)"),
])
def test_a_wrong_context_entry_is_one_line_naming_the_card_or_folder(tmp_path, context, message):
    import shutil

    from micromets.errors import MicrometsError
    from micromets.model import Detector

    folder = tmp_path / "m"
    shutil.copytree(REPO / "src" / "micromets" / "models" / "cnn-ln", folder)
    card = json.loads((folder / "model.json").read_text())
    (folder / "model.json").write_text(json.dumps({**card, "context": context}))
    with pytest.raises(MicrometsError, match=r"^\S*m\S*: " + message.replace("(", r"\(").replace(")", r"\)")):
        Detector.load(folder)


def test_the_bundled_context_model_runs_by_name_and_checks_node1s_false_cells(tmp_path):
    """``micromets analyze --model tissue-context`` (the default's networks with the bundled 96 µm context model):
    the run names its context model, checks the cells node 1's heatmap calls tumour, and the node stays negative
    with nothing left at or above 0.5."""
    import subprocess
    import sys

    run = subprocess.run([sys.executable, "-m", "micromets", "analyze", str(REPO / "demo" / "slides" / "node1.tiff"),
                          "--out", str(tmp_path), "--model", "tissue-context"], capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stderr
    result = json.loads((tmp_path / "node1" / "result.json").read_text())
    assert result["model"]["context"] == {"name": "micromets-tissue-context", "version": "0.1.0", "field_um": 96.0}
    assert result["timing_s"]["n_context"] >= 1 and result["node_class"] == "negative"
    assert np.load(tmp_path / "node1" / "heatmap.npy").max() < 0.5
