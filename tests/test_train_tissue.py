"""Tissue-class recipe (issue 14): window labels from what the windows show, the partial-label loss, the sampling,
the held-out folds, and a short real training run scored per source and exported to ONNX."""

import numpy as np
import pytest
from scipy import ndimage

pytest.importorskip("torch")

import torch  # noqa: E402

from micromets.model import Detector  # noqa: E402
from micromets.tiles import resample  # noqa: E402
from micromets.train import tissue_data as td  # noqa: E402
from micromets.train import tissue_fit as tf  # noqa: E402
from micromets.train.data import Sample, read_rgb  # noqa: E402
from micromets.train.fit import base_card, export_onnx, normalise_by_group  # noqa: E402


def test_partial_label_loss_is_minus_log_of_the_summed_normal_probability():
    logits = torch.tensor([[0.3, -1.0, 2.0, 0.1, 0.0, -0.5, 1.5], [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 3.0]])
    p = torch.softmax(logits, dim=1)
    got = tf.partial_label_loss(logits, torch.tensor([td.ANY_NORMAL, td.ANY_NORMAL]))
    assert got.item() == pytest.approx(-torch.log(1 - p[:, td.CARCINOMA]).mean().item(), rel=1e-5)
    exact = tf.partial_label_loss(logits, torch.tensor([td.CARCINOMA, 1]))
    assert exact.item() == pytest.approx(-(torch.log(p[0, td.CARCINOMA]) + torch.log(p[1, 1])).item() / 2, rel=1e-5)


def _set(sources_labels):
    images, windows = [], []
    for source, label, n in sources_labels:
        for _ in range(n):
            images.append(Sample(np.zeros((120, 120, 3), np.uint8), label, source, source, source))
            windows.append(td.Window(len(images) - 1, 0, 0, label))
    return td.TissueSet(images, windows, 120)


def test_sampling_gives_each_half_half_and_each_source_an_equal_share_of_its_half():
    ts = _set([("a", td.CARCINOMA, 10), ("b", td.CARCINOMA, 90), ("c", td.ANY_NORMAL, 5), ("d", 1, 45),
               ("e", 2, 50)])
    p = tf.sampling_weights(ts, np.ones(len(ts.windows), bool))
    src = ts.sources()
    assert p[src == "a"].sum() == pytest.approx(0.25) and p[src == "b"].sum() == pytest.approx(0.25)
    for s in "cde":
        assert p[src == s].sum() == pytest.approx(1 / 6)
    keep = src != "a"
    p = tf.sampling_weights(ts, keep)
    assert p[~keep].sum() == 0 and p[src == "b"].sum() == pytest.approx(0.5)


def _flat(colour, shape=(120, 120)):
    return np.full((*shape, 3), colour, np.uint8)


def test_normal_composite_joins_two_windows_along_a_boundary_or_band():
    """Every composite has a's shape and shows both windows (each over >= 5 % of the field) and nothing else but
    the 1 px soft edge; bands stay within BAND_UM; the same generator state gives the same composite."""
    lymphoid, stroma = _flat((60, 30, 120)), _flat((230, 150, 200), (224, 224))
    rng = np.random.default_rng(0)
    widths = []
    for _ in range(200):
        c = tf.normal_composite(lymphoid, stroma, rng, mpp=0.5)
        assert c.shape == lymphoid.shape and c.dtype == np.uint8
        is_a, is_b = (c == lymphoid[0, 0]).all(-1), (c == stroma[0, 0]).all(-1)
        assert is_a.mean() >= 0.05 and is_b.mean() >= 0.05
        assert (is_a | is_b).mean() > 0.9
        widths.append(is_b.mean())
    assert min(widths) < 0.3 < 0.6 < max(widths)   # thin bands and half-planes both occur
    one = tf.normal_composite(lymphoid, stroma, np.random.default_rng(5))
    np.testing.assert_array_equal(one, tf.normal_composite(lymphoid, stroma, np.random.default_rng(5)))


def test_node_edge_composites_put_the_outside_window_beyond_the_band_never_touching_the_parenchyma():
    """With an outside window (glass / fat) some bands have it on their far side: parenchyma | band | outside;
    the outside pixels never border parenchyma pixels directly (the band lies between them)."""
    lymphoid, stroma, glass = _flat((60, 30, 120)), _flat((230, 150, 200)), _flat((245, 245, 245), (224, 224))
    rng = np.random.default_rng(1)
    edges = 0
    for _ in range(300):
        c = tf.normal_composite(lymphoid, stroma, rng, mpp=0.5, c=glass)
        is_a, is_c = (c == lymphoid[0, 0]).all(-1), (c == glass[0, 0]).all(-1)
        if is_c.any():
            edges += 1
            near_a = ndimage.binary_dilation(is_a, iterations=3)
            assert not (near_a & is_c).any() and (c == stroma[0, 0]).all(-1).mean() > 0.05
    assert 0.1 < edges / 300 < 0.4   # BAND_SHARE × EDGE_SHARE = 0.3 of composites, less when a side is cut off


def test_batches_composite_normal_windows_only_parenchyma_with_another_source():
    """Composites replace about COMPOSITE_SHARE of the normal windows, each = a parenchyma window + a window of a
    non-parenchyma normal source (+ fat beyond a band), labelled ANY_NORMAL; carcinoma windows are never touched; deterministic per seed."""
    colours = {"c16_tumour": (10, 200, 10), "crc_lymphoid": (60, 30, 120), "c16_normal": (90, 60, 160),
               "crc_stroma": (230, 150, 200), "crc_fat": (250, 250, 250)}
    images, windows = [], []
    for source, label in (("c16_tumour", td.CARCINOMA), ("crc_lymphoid", 0), ("c16_normal", td.ANY_NORMAL),
                          ("crc_stroma", 1), ("crc_fat", 2)):
        images.append(Sample(_flat(colours[source]), label, source, source, source))
        windows.append(td.Window(len(images) - 1, 0, 0, label))
    ts = td.TissueSet(images, windows, 120)
    p = tf.sampling_weights(ts, np.ones(len(windows), bool))
    pure = composite = with_parenchyma = 0
    for seed in range(20):
        out, labels = tf.batch_windows(ts, p, 64, np.random.default_rng(seed))
        again, labels_again = tf.batch_windows(ts, p, 64, np.random.default_rng(seed))
        assert all((x == y).all() for x, y in zip(out, again)) and (labels == labels_again).all()
        for rgb, label in zip(out, labels):
            values = {v for v in colours.values() if (rgb == v).all(-1).mean() >= 0.02}
            if len(values) == 1:
                pure += 1
                continue
            composite += 1
            assert label == td.ANY_NORMAL and colours["c16_tumour"] not in values
            with_parenchyma += len(values & {colours["crc_lymphoid"], colours["c16_normal"]}) == 1
            assert values & {colours["crc_stroma"], colours["crc_fat"]}
    assert composite / (pure + composite) == pytest.approx(0.5 * tf.COMPOSITE_SHARE, abs=0.03)
    assert with_parenchyma > 0.9 * composite   # (a wide band between it and fat can hide the parenchyma)
    out, labels = tf.batch_windows(ts, p, 64, np.random.default_rng(0), composite_share=0.0)
    assert all((rgb == rgb[0, 0]).all() for rgb in out)


class _GreenIsCarcinoma(torch.nn.Module):
    """A fixed scorer for the mining test: carcinoma logit = mean green channel (normalised input), others 0."""

    def forward(self, x):
        logits = torch.zeros(len(x), len(td.CLASSES))
        logits[:, td.CARCINOMA] = 4 * x[:, 1].mean(dim=(1, 2))
        return logits


def test_mining_keeps_the_most_carcinoma_like_normals_of_every_source_with_their_labels_and_later_batches_draw_them():
    """Hard normals: the normal windows (and fresh composites) the model scores highest, an equal quota per normal
    source and for the composites (a source too small for its quota leaves it to the others), never a carcinoma
    window, each with its own label (composites ANY_NORMAL); then about HARD_SHARE of a batch's normal windows
    come from them, and the model is back in training mode."""
    colours = {"c16_tumour": (10, 250, 10), "crc_lymphoid": (60, 30, 120), "crc_stroma": (200, 200, 180),
               "crc_fat": (250, 90, 250)}
    images, windows = [], []
    for source, label in (("c16_tumour", td.CARCINOMA), ("crc_lymphoid", 0), ("crc_stroma", 1), ("crc_fat", 2)):
        for _ in range(10):
            images.append(Sample(_flat(colours[source]), label, source, source, source))
            windows.append(td.Window(len(images) - 1, 0, 0, label))
    ts = td.TissueSet(images, windows, 120)
    p = tf.sampling_weights(ts, np.ones(len(windows), bool))
    pools = tf.composite_pools(ts, p)
    model = _GreenIsCarcinoma().train()
    pixels, labels = tf.mine_hard_normals(model, ts, p, pools, np.random.default_rng(0), n_composites=30, top=12)
    assert model.training and len(pixels) == len(labels) == 12
    assert sorted(labels.tolist()) == [td.ANY_NORMAL] * 3 + [0] * 3 + [1] * 3 + [2] * 3  # 3 from each
    assert all((rgb == colours["crc_stroma"]).all(-1).mean() > 0.99 for rgb in pixels[:3])  # greenest first
    for source, label in (("crc_lymphoid", 0), ("crc_fat", 2)):  # the pure windows are that source's
        assert all((rgb == colours[source]).all(-1).all() for rgb, lab in zip(pixels, labels) if lab == label)
    pixels, labels = tf.mine_hard_normals(model, ts, p, pools, np.random.default_rng(0), n_composites=30, top=45)
    assert [(labels == k).sum() for k in (0, 1, 2, td.ANY_NORMAL)] == [10, 10, 10, 15]  # quota 11 > 10 windows
    assert not any((rgb == colours["c16_tumour"]).all(-1).any() for rgb in pixels)
    hard = ([_flat((1, 2, 3))] * 5, np.full(5, 4))
    drawn = normal = 0
    for seed in range(20):
        out, out_labels = tf.batch_windows(ts, p, 64, np.random.default_rng(seed), composite_share=0.0, hard=hard)
        is_hard = np.array([(rgb == (1, 2, 3)).all() for rgb in out])
        assert (out_labels[is_hard] == 4).all()
        drawn += is_hard.sum()
        normal += (out_labels != td.CARCINOMA).sum()
    assert drawn / normal == pytest.approx(tf.HARD_SHARE, abs=0.04)


def test_folds_hold_out_disjoint_whole_groups():
    groups = [g for fold in td.FOLDS.values() for g in fold]
    assert len(groups) == len(set(groups))
    assert {"c16:tumor_001", "c16:tumor_004", "c16:tumor_064"} <= set(groups)


def test_held_out_report_of_one_fold_scores_only_that_folds_sources_and_saves_its_model(tmp_path):
    """One fold, one seed: only that fold's sources are scored; with save_models its model is exported as
    <fold>-s<seed>, a detector whose card names the groups it never saw, the µm/px it was trained at and the stain
    augmentation it was trained with."""
    from micromets.model import Detector

    rng = np.random.default_rng(0)
    images, windows = [], []
    for group, source, label in (("c16:tumor_001", "c16_tumour", td.CARCINOMA), ("crc:kather2016", "crc_stroma", 1),
                                 ("crc:crc_val_he_7k", "crc_lymphoid", 0), ("monuseg:TCGA-AR-A1AK",
                                                                              "monuseg_carcinoma", td.CARCINOMA)):
        for _ in range(3):
            images.append(Sample(rng.integers(0, 200, (120, 120, 3), dtype=np.uint8), label, group, source, group))
            windows.append(td.Window(len(images) - 1, 0, 0, label))
    ts = td.TissueSet(images, windows, 120, mpp=1.0)
    report = tf.held_out_report(ts, [0], steps=2, folds=["fold1"], save_models=tmp_path, stain_jitter=(0.5, 0.1, 0.3),
                                mil="add", log=lambda m: None)
    assert list(report["folds"]) == ["fold1"] and report["stain_jitter"] == [0.5, 0.1, 0.3] and report["mil"] == "add"
    assert [p.name for p in tmp_path.iterdir()] == ["fold1-s0"]
    saved = Detector.load(tmp_path / "fold1-s0")
    assert saved.input_mpp == 1.0 and saved.card["held_out_groups"] == sorted(td.FOLDS["fold1"])
    assert "H/E stain jitter (σ 0.5, vectors σ 0.1, residual cast ±0.3)" in saved.card["training"]["augmentation"]
    assert saved.card["training"]["multiple_instance"].startswith("add: 4 bags per batch of 8 windows")
    assert saved.predict(images[0].rgb[:96, :96][None]).shape == (1,)
    assert set(report["per_seed"]["0"]) == {"c16_tumour", "crc_stroma", "operating_point"}  # no AUC: one class
    assert report["summary"]["crc_stroma"]["share_windows_at_or_above"]["per_seed"][0] in (0.0, 1.0)
    assert "ensemble" not in report  # one seed: nothing to average


def test_a_bag_is_scored_by_the_mean_of_its_top_carcinoma_probabilities_only():
    """bag_loss: -log of the mean of each bag's MIL_TOP highest carcinoma probabilities, averaged over bags; a
    window below the top ones does not change it, and a bag with one carcinoma-like window costs less than a bag
    with none."""
    torch.manual_seed(0)
    logits = torch.randn(3, 8, len(td.CLASSES))
    logits[0, 5, td.CARCINOMA] = 6.0
    p = torch.softmax(logits, dim=-1)[..., td.CARCINOMA]
    want = -torch.log(torch.topk(p, tf.MIL_TOP, dim=1).values.mean(dim=1)).mean()
    assert tf.bag_loss(logits).item() == pytest.approx(want.item(), rel=1e-5)
    lowest = int(torch.argmin(p[1]))
    changed = logits.clone()
    changed[1, lowest, td.CARCINOMA] -= 3.0
    assert tf.bag_loss(changed).item() == pytest.approx(tf.bag_loss(logits).item(), rel=1e-6)
    assert tf.bag_loss(logits[:1]).item() < tf.bag_loss(logits[1:2]).item()


def test_bags_are_the_kept_weak_carcinoma_tiles_windows_with_tissue_drawn_an_equal_share_per_source():
    """tile_bags: only the given tiles of WEAK_CARCINOMA sources, every window over tissue (the glass half
    of a tile gives none); bag_windows: each source half the bags however many tiles it has, each window a
    window-sized crop of its tile."""
    rng = np.random.default_rng(0)
    tissue = rng.integers(60, 180, (240, 240, 3), dtype=np.uint8)
    half_glass = tissue.copy()
    half_glass[..., 2] = 30      # a blue no BreCaHAD tile has: marks this tile's windows
    half_glass[:, 120:] = 245
    images = [Sample(half_glass, td.CARCINOMA, "monuseg:TCGA-X", "monuseg_carcinoma", "m0")]
    images += [Sample(tissue, td.CARCINOMA, "brecahad:all", "brecahad_carcinoma", f"b{k}") for k in range(9)]
    images += [Sample(tissue, td.CARCINOMA, "monuseg:TCGA-Y", "monuseg_carcinoma", "held"),
               Sample(tissue, td.CARCINOMA, "c16:tumor_001", "c16_tumour", "c16")]
    ts = td.TissueSet(images, [td.Window(i, 0, 0, td.CARCINOMA) for i in range(len(images))], 120)
    bags = td.tile_bags(ts, set(range(10)) | {11})  # not the held-out monuseg tile (10); c16 (11) is no bag
    assert [i for i, _ in bags] == list(range(10))
    # the windows wholly on the glass half (x = 120) are not in the bag; half on tissue (x = 60) are
    assert sorted(map(tuple, bags[0][1].tolist())) == [(y, x) for y in (0, 60, 120) for x in (0, 60)]
    assert all(len(o) == 9 for _, o in bags[1:])
    windows = tf.bag_windows(ts, bags, np.random.default_rng(1), n_bags=400, n_windows=2)
    assert len(windows) == 800 and all(w.shape == (120, 120, 3) for w in windows)
    from_monuseg = sum(int((w[..., 2] == 30).any()) for w in windows[::2])
    assert 160 <= from_monuseg <= 240  # about half of 400 bags from the one monuseg tile, against 9 BreCaHAD


def test_averaged_scores_are_the_mean_probability_of_the_models_window_by_window():
    """The seeds' models averaged: a window one seed calls 0.9 and the other 0.3 is at 0.6, so at 0.5 it is
    called tumour; every kind of held-out score is averaged the same way."""
    runs = [({7: np.array([0.9, 0.2])}, {3: 0.8}, {7: {"label": 1, "probability": 0.9}}),
            ({7: np.array([0.3, 0.4])}, {3: 0.2}, {7: {"label": 1, "probability": 0.3}})]
    images, windows, c16 = tf.averaged_scores(runs)
    assert images[7] == pytest.approx([0.6, 0.3]) and windows[3] == pytest.approx(0.5)
    assert c16[7] == {"label": 1, "probability": pytest.approx(0.6)}


def _normalised(path, mpp, source, label, group):
    return normalise_by_group([Sample(resample(read_rgb(path), mpp, 0.5), label, group, source, str(path))])[0]


def test_carcinoma_tiles_give_dense_windows_and_stroma_tiles_none(shared_data):
    """A MoNuSeg carcinoma tile keeps only its nucleus-dense windows as carcinoma; the same rule applied to a
    colorectal stroma tile (here as if it were a carcinoma tile) keeps almost nothing."""
    carcinoma = _normalised(next((shared_data / "breast_he" / "monuseg" / "images").glob("*DX1.png")), 0.25,
                            "monuseg_carcinoma", td.CARCINOMA, "monuseg:x")
    windows = td.label_windows([carcinoma], 120, 0.5)
    n_grid = len(list(td._grid(*carcinoma.rgb.shape[:2], 120, 60)))
    assert all(w.label == td.CARCINOMA for w in windows)
    assert 0.2 * n_grid < len(windows) < n_grid  # the tile's stroma and sparse windows are dropped
    stroma_tiles = sorted((shared_data / "crc_tiles" / "crc_val_he_7k" / "STR").iterdir())
    dense = 0
    for path in stroma_tiles:
        s = _normalised(path, 0.5, "monuseg_carcinoma", td.CARCINOMA, "s")
        dense += len(td.label_windows([s], 120, 0.5))
    assert dense <= 2


def test_bach_windows_follow_the_mask(shared_data):
    bach = shared_data / "breast_he" / "bach_wsi_A03"
    invasive = _normalised(bach / "images" / "A03_0_image_12.jpg", td.BACH_MPP, "bach_carcinoma", td.CARCINOMA,
                           "bach:A03")
    mask = td.carcinoma_mask(invasive)
    assert mask.shape == invasive.rgb.shape[:2] and mask.mean() > 0.5
    for w in td.label_windows([invasive], 120, 0.5):
        inside = mask[w.y:w.y + 120, w.x:w.x + 120].mean()
        assert (w.label == td.CARCINOMA and inside >= td.MASK_FRACTION_MIN) or (w.label == td.ANY_NORMAL
                                                                               and inside == 0)


def test_a_short_training_run_scores_held_out_sources_and_exports(tmp_path, shared_data):
    """Real data, few steps: the report has every held-out source and the ONNX model gives torch's carcinoma
    probability through Detector (7 classes, tumour index from the card)."""
    root = shared_data
    images = [_normalised(p, 0.243, "c16_tumour", td.CARCINOMA, "c16:tumor_001")
              for p in sorted((root / "camelyon16_patches" / "tumor").glob("tumor_001*"))[:6]]
    images += [_normalised(p, 0.243, "c16_normal", td.ANY_NORMAL, "c16:tumor_004")
               for p in sorted((root / "camelyon16_patches" / "normal").glob("tumor_004*"))[:6]]
    images += [_normalised(p, 0.5, "crc_stroma", 1, "crc:crc_val_he_7k")
               for p in sorted((root / "crc_tiles" / "crc_val_he_7k" / "STR").iterdir())]
    ts = td.TissueSet(images, td.label_windows(images, 120, 0.5), 120)
    keep = np.array([ts.images[w.image].group != "crc:crc_val_he_7k" for w in ts.windows])
    model = tf.train_tissue(ts, keep, steps=6, batch=8, log=lambda m: None)
    held = sorted({w.image for w, k in zip(ts.windows, keep) if not k})
    report = tf.source_report(ts, tf.score_images(model, ts, held), {})
    assert set(report) == {"crc_stroma"} and report["crc_stroma"]["images"] == 4
    card = base_card("t", "0", 0.5, 96, 16) | {"classes": td.CLASSES, "tumour_class_index": td.CARCINOMA}
    export_onnx(model, tmp_path, card, 96)
    det = Detector.load(tmp_path)
    crops = np.stack([images[0].rgb[:96, :96], images[-1].rgb[:96, :96]])
    want = tf.carcinoma_probability(model, crops)
    np.testing.assert_allclose(det._run(crops), want, atol=1e-3)  # float32 input scaling order


def test_carcinoma_images_without_a_labelled_window_are_left_out_of_the_labelled_image_share():
    """Two BACH carcinoma tiles: one with a labelled carcinoma window, found; one whose coarse mask covers only fat
    (no window passes the density rule), missed. All images: 1 of 2 found; images that show carcinoma: 1 of 1."""
    shows, fat_only = (td.Sample(np.zeros((8, 8, 3), np.uint8), td.CARCINOMA, group="bach:A03",
                                 source="bach_carcinoma", name=name) for name in "ab")
    ts = td.TissueSet([shows, fat_only], [td.Window(0, 0, 0, td.CARCINOMA)], 8)
    row = tf.source_report(ts, {0: np.array([0.2, 0.9]), 1: np.array([0.1, 0.3])}, {0: 0.9})["bach_carcinoma"]
    assert row["share_images_found"] == 0.5
    assert row["labelled_images"] == 1 and row["share_labelled_images_found"] == 1.0
    assert row["labelled_window_sensitivity"] == 1.0


def test_operating_point_weighs_each_normal_source_the_same():
    """Two normal sources: one with 1,000 windows all at 0.2, one with 10 windows spread 0.55-0.95. Pooled, the
    small one would vanish; weighed per source the threshold must leave at most 10 % (of 5 % x 2 sources) of it."""
    img = td.Sample(np.zeros((8, 8, 3), np.uint8), td.ANY_NORMAL, group="pcam:0", source="pcam_hard_negative",
                    name="x")
    small = td.Sample(np.zeros((8, 8, 3), np.uint8), 1, group="crc:kather2016", source="crc_stroma", name="y")
    tumour = td.Sample(np.zeros((8, 8, 3), np.uint8), td.CARCINOMA, group="monuseg:A", source="monuseg_carcinoma",
                       name="z")
    ts = td.TissueSet([img, small, tumour], [td.Window(2, 0, 0, td.CARCINOMA)] * 4, 8)
    scores = {0: np.full(1000, 0.2), 1: np.linspace(0.55, 0.95, 10)}
    op = tf.operating_point(ts, scores, {0: 0.99, 1: 0.97, 2: 0.9, 3: 0.6})
    assert op["threshold"] == 0.91 and op["normal_window_share"] <= 0.05
    assert op["carcinoma_window_sensitivity"] == 0.5 and op["normal_window_share_at_0_5"] == 0.5


def test_failure_modes_are_written_from_the_measured_numbers():
    held = {"seeds": [0, 1], "summary": {
        "crc_stroma": {"share_images_called_tumour": {"mean": 0.7}, "share_windows_at_or_above": {"mean": 0.4}},
        "crc_fat": {"share_images_called_tumour": {"mean": 0.0}, "share_windows_at_or_above": {"mean": 0.01}},
        "bach_carcinoma": {"share_images_found": {"mean": 0.99}, "labelled_window_sensitivity": {"mean": 0.4}}}}
    unseen = {"breakhis": {"a": {"label": "benign", "max_probability": 0.9},
                           "b": {"label": "benign", "max_probability": 0.1},
                           "c": {"label": "malignant", "max_probability": 0.99}}}
    text = tf.failure_modes(held, unseen)
    assert len(text) == 3
    assert "40% of the crc stroma tissue fields" in text[0] and "2 seeds" in text[0]
    assert "Misses 60% of the annotated bach carcinoma fields" in text[1]
    assert "1 of 2 benign BreakHis images" in text[2]


def test_train_refuses_a_held_out_file_that_is_not_a_report_before_training(tmp_path):
    import subprocess
    import sys

    bad = tmp_path / "r.json"
    bad.write_text('{"auc": 1}')
    run = subprocess.run([sys.executable, "-m", "micromets", "train", "--recipe", "tissue-classes", "--out",
                          str(tmp_path / "m"), "--held-out", str(bad)], capture_output=True, text=True)
    assert run.returncode == 2 and "not a bench/tissue_heldout.py result" in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1 and not (tmp_path / "m").exists()


def test_export_fold_refuses_an_unknown_fold_before_reading_data(tmp_path):
    """bench/tissue_heldout.py --export-fold: an unknown fold is one line on stderr and exit 2, nothing written
    (checked before the data is read: the run takes seconds, no training)."""
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    run = subprocess.run([sys.executable, str(repo / "bench" / "tissue_heldout.py"), "--export-fold", "fold9",
                          "--out", str(tmp_path / "m"), "--data-root", str(tmp_path / "no-data")],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2, run.stderr
    assert run.stderr.strip().splitlines() == [
        "tissue_heldout.py: error: no fold fold9 (folds: fold1, fold2, fold3)"]
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize("args, message", [
    (["--mpp", "0"], "--mpp must be > 0 µm/px, got 0.0"),
    (["--mpp", "0.75", "--model", "default"], "--mpp is not for --model (a given model has its own)"),
    (["--save-models", "x", "--export-fold", "fold1"], "--save-models is for the held-out runs (not with --model or "
                                                       "--export-fold)"),
    (["--mil", "add", "--model", "default"], "--mil is for the held-out runs (not with --model or --export-fold)"),
    (["--stain-jitter", "0.5,0.1,2"], "--stain-jitter '0.5,0.1,2': write SIGMA,VECTOR_SIGMA[,CAST] with 0 <= SIGMA < 1, "
                                      "VECTOR_SIGMA >= 0 and 0 <= CAST <= 1, e.g. 0.25,0.05"),
])
def test_a_wrong_field_of_view_is_refused_before_reading_data(tmp_path, args, message):
    """bench/tissue_heldout.py --mpp (another field of view, held out): a resolution that is not > 0, or one asked
    of a given model, --save-models outside the held-out runs and a malformed --stain-jitter are one line and exit
    2 before any data is read."""
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    run = subprocess.run([sys.executable, str(repo / "bench" / "tissue_heldout.py"), *args, "--out",
                          str(tmp_path / "m"), "--data-root", str(tmp_path / "no-data")],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and run.stderr.strip().splitlines() == [f"tissue_heldout.py: error: {message}"]
    assert not (tmp_path / "m").exists()


def test_a_fixed_model_report_gives_the_camelyon16_auc_of_its_patches_as_the_held_out_run_does():
    """fixed_model_report and held_out_report share c16_patch_scores / c16_auc: the pooled AUC of the CAMELYON16
    patches (label: tumour source), present only when both classes are."""
    from micromets.model import Detector

    rng = np.random.default_rng(0)
    images, windows = [], []
    for source, label in (("c16_tumour", td.CARCINOMA), ("c16_normal", td.ANY_NORMAL), ("crc_stroma", 1)):
        for _ in range(2):
            images.append(Sample(rng.integers(0, 200, (96, 96, 3), dtype=np.uint8), label, "g", source, source))
            windows.append(td.Window(len(images) - 1, 0, 0, label))
    ts = td.TissueSet(images, windows, 96)
    report = tf.fixed_model_report(Detector.load(), ts)
    assert report["table"]["c16_patches"]["images"] == 4 and 0.0 <= report["table"]["c16_patches"]["auc"] <= 1.0
    rows = tf.c16_patch_scores(ts, {i: np.array([0.1 * i]) for i in range(6)}, range(6))
    assert [r["label"] for r in rows.values()] == [1, 1, 0, 0]
    assert tf.c16_auc(rows)["c16_patches"]["auc"] == 0.0  # the tumour patches score lowest here
    assert tf.c16_auc({i: rows[i] for i in (0, 1)}) == {}  # one class: no AUC


def test_held_out_scores_of_a_detector_with_context_are_min_of_own_and_the_field_around(tmp_path):
    """score_images / labelled_window_scores give a detector with a context model min(own, context): a context
    model that sees exactly the detector's own window (the same network, same µm/px) changes nothing, so the
    fields are centred on the windows; a network of another field only ever lowers a window."""
    from pathlib import Path

    from conftest import default_with_context
    from micromets.slide import open_slide

    with open_slide(Path(__file__).resolve().parents[1] / "demo" / "slides" / "node2.tiff") as slide:
        tile = slide.read_window(slide.l0_width * 0.4, slide.l0_height * 0.4, 300, 260, 0.5)
    images = [Sample(tile, td.CARCINOMA, "g", "monuseg_carcinoma", "t"),
              Sample(tile[60:160, 40:140].copy(), 1, "h", "pcam_hard_negative", "p")]
    ts = td.TissueSet(images, [td.Window(0, 40, 60, td.CARCINOMA), td.Window(1, 0, 0, 1)], 120)
    plain = Detector.load(default_with_context(tmp_path, None))
    own = tf.score_images(plain, ts, [0, 1])
    same = tf.score_images(Detector.load(default_with_context(tmp_path, "default")), ts, [0, 1])
    other = Detector.load(default_with_context(tmp_path, "coarse", 1.0))
    lower = tf.score_images(other, ts, [0, 1])
    assert len(own[0]) > 4 and len(own[1]) == 1
    for i in (0, 1):
        np.testing.assert_allclose(same[i], own[i], atol=1e-5)
        assert (lower[i] <= own[i] + 1e-6).all()
    assert any((lower[i] < own[i] - 0.01).any() for i in (0, 1))
    labelled = tf.labelled_window_scores(other, ts, [0], 96)
    assert labelled[0] <= tf.labelled_window_scores(plain, ts, [0], 96)[0] + 1e-6
    report = tf.fixed_model_report(other, ts, groups=["h"])
    assert set(report["table"]) == {"pcam_hard_negative"} and report["context"]["field_um"] == 32.0
