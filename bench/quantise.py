"""INT8 static quantisation of the shipped fine detector, calibrated and checked on real tissue (issue 8).

    # a shipped model: the float model (its card's command, --out DIR), e.g. the default 0.4.1 from the float 0.4.0
    PYTHONPATH=src .venv/bin/python bench/quantise.py --float-model build/models/tissue-0.4.0 --out src/micromets/models/default
    PYTHONPATH=src .venv/bin/python bench/quantise.py --float-model /tmp/float-0.2.0 --out /tmp/grid \
        --methods minmax,entropy,percentile --keep-float none,first,first+last --weights s8,s8-7bit,u8  # every variant

Rebuilds, deterministically (same bytes on every run), an INT8 ONNX graph of the float model ``--float-model``
(onnxruntime ``quantize_static``, QDQ format, per-channel symmetric weights, uint8 activations) and compares it
with the float model patch by patch. The default recipe is the one chosen from the variants below: percentile
calibration (99.999 %), 7-bit int8 weights, first convolution and classifier kept in float.

Real patches only, cut through the detector's own input path at its ``input_mpp`` (0.5 µm/px, 96 px):

- ``cmu_small_region.svs`` through OpenSlide as ``--mode thorough`` reads it (tissue mask, tile grid, block reads,
  per-slide stain estimate from :func:`micromets.analyze.stain_sample`);
- the CAMELYON16 patches (57 tiles, 4 windows each), CAMELYON17 tiles (5, one per centre) and colorectal tiles
  (33) through :meth:`Detector.windows` with a stain estimate per image, as :meth:`Detector.score_image` does.

Calibration uses crops shifted by ¼, ½ and ¾ of a patch from the evaluation windows (the same images, other
pixels: the slide's grid offset right and down, the tiles' windows cut from the image without its first rows and
columns); only patches that pass the card's tissue filter reach the network, so only those calibrate it.

Per candidate (calibration method × layers kept in float × weight format) it reports, over every evaluation
patch the network scores: max and mean |p_int8 − p_float|, the share of patches whose side of 0.5 flips, the
CAMELYON16 AUC of both graphs (per tile = max over its windows, as the card's metrics; and per window), and the
network's CPU ms per patch (one thread, batch 128). The best candidate (fewest flips, then smallest max |Δp|) is
written to ``OUT/model.onnx`` with a card ``OUT/model.json`` (the float version with patch number + 1, a
``quantisation`` section with the numbers); then the bundled demo case is run with both models in both scan modes (:func:`demo_check`).
All numbers go to ``OUT/report.json``.

Measured (2,816 calibration and 1,235 evaluation patches; docs/speed.md has the table): full-range int8 weights
everywhere flip 16.5 % of the patches (max |Δp| 0.96: onnxruntime's AVX2 u8·s8 kernel saturates); 7-bit weights
0.57 % (max 0.087); with the first and last layers in float, 0 flips and max |Δp| 0.020 (minmax), 0.025 (entropy),
0.020 (percentile), network 0.35 CPU ms per patch against 0.56 in float.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def tile_images(data_root: Path) -> list[dict]:
    """Every real H&E tile of ``data_root``: source, name, uint8 RGB, µm/px and label (1 tumour, 0 normal,
    None unknown)."""
    from PIL import Image

    images = []
    for label_dir, label in (("tumor", 1), ("normal", 0)):
        for path in sorted((data_root / "camelyon16_patches" / label_dir).glob("*.png")):
            images.append({"source": "camelyon16", "name": path.name, "mpp": 0.243, "label": label, "path": path})
    for path in sorted((data_root / "camelyon17_tiles").glob("*.jpeg")):
        images.append({"source": "camelyon17", "name": path.name, "mpp": 0.24, "label": None, "path": path})
    for path in sorted((data_root / "crc_tiles" / "kather2016").glob("*/*.tif")):
        images.append({"source": "crc", "name": f"{path.parent.name}/{path.name}", "mpp": 0.495,
                       "label": None, "path": path})
    for path in sorted((data_root / "crc_tiles" / "nct_crc_he_100k").glob("*.tif")):
        images.append({"source": "crc", "name": path.name, "mpp": 0.5, "label": None, "path": path})
    for image in images:
        image["rgb"] = np.asarray(Image.open(image.pop("path")).convert("RGB"))
    return images


def tile_patches(det, image: dict, shift_px: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Windows of one tile (``Detector.windows``; ``shift_px`` image pixels cut from the top and left first) and the
    per-tile stain look-up table they are normalised with (estimated from the unshifted windows)."""
    det.set_stain_reference(det.windows(image["rgb"], image["mpp"]))
    lut = det._slide_lut
    rgb = image["rgb"][shift_px:, shift_px:] if shift_px else image["rgb"]
    return det.windows(rgb, image["mpp"]), lut


def slide_patches(det, slide_path: Path, shift_um: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Every tissue patch of a slide as ``--mode thorough`` reads it (grid offset by ``shift_um``), and the
    slide's stain look-up table (:func:`micromets.analyze.stain_sample`)."""
    from micromets.analyze import stain_sample
    from micromets.slide import open_slide
    from micromets.tiles import iter_patch_blocks, tile_grid
    from micromets.tissue import tissue_mask

    with open_slide(slide_path) as slide:
        tissue = tissue_mask(slide)
        det.set_stain_reference(stain_sample(slide, tissue, det.input_mpp, det.patch_px))
        grid = tile_grid(slide, tissue, det.cell_um)
        if not shift_um:
            blocks = [b.patches for b in iter_patch_blocks(slide, grid, det.patch_px, det.input_mpp, 16, readers=0)]
            return np.concatenate(blocks), det._slide_lut
        l0_cell, l0_shift = round(grid.l0_cell), shift_um / slide.l0_mpp
        patches = [slide.read_at_mpp(round(h_c * grid.l0_cell + l0_shift), round(h_r * grid.l0_cell + l0_shift),
                                     l0_cell, l0_cell, det.input_mpp)[:det.patch_px, :det.patch_px]
                   for h_r, h_c in np.argwhere(grid.h_tissue[:-1, :-1])]
    return np.stack([p for p in patches if p.shape[:2] == (det.patch_px, det.patch_px)]), det._slide_lut


#: Calibration crops are the evaluation windows shifted right and down by these fractions of a patch.
CALIBRATION_SHIFTS = (0.25, 0.5, 0.75)


def real_sets(det, data_root: Path) -> dict:
    """Evaluation and calibration patch sets: ``{"eval": [...], "calib": [...]}``, each a list of dicts with
    source, name, uint8 patches and the stain table to apply (the same as the detector's for that image)."""
    sets = {"eval": [], "calib": []}
    shifts = [("eval", 0.0)] + [("calib", f) for f in CALIBRATION_SHIFTS]
    svs = data_root / "slides" / "cmu_small_region.svs"
    for kind, shift in shifts:
        patches, lut = slide_patches(det, svs, shift * det.cell_um)
        sets[kind].append({"source": "cmu_svs", "name": svs.name, "label": None, "patches": patches, "lut": lut})
    for image in tile_images(data_root):
        for kind, shift in shifts:
            patches, lut = tile_patches(det, image, round(shift * det.cell_um / image["mpp"]))
            sets[kind].append({"source": image["source"], "name": image["name"], "label": image["label"],
                               "patches": patches, "lut": lut})
    det.set_stain_reference(None)
    return sets


def network_input(det, entry: dict) -> np.ndarray:
    """The float32 NCHW network input of the patches of ``entry`` that pass the card's tissue filter."""
    from micromets import normalise

    det._slide_lut = entry["lut"]
    keep = normalise.tissue_fraction(entry["patches"], det._tissue_beta) >= det._tissue_min_fraction
    return det._input(entry["patches"][keep])


def probabilities(det, entries: list[dict]) -> list[np.ndarray]:
    """``Detector.predict`` of every entry's patches with its own stain table (0 where the tissue filter drops)."""
    out = []
    for entry in entries:
        det._slide_lut = entry["lut"]
        out.append(det.predict(entry["patches"]))
    det._slide_lut = None
    return out


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (Mann–Whitney; ties count one half)."""
    pos, neg = scores[labels == 1], scores[labels == 0]
    greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(greater / (len(pos) * len(neg)))


def network_cpu_ms(onnx_path: Path, x: np.ndarray, batch: int = 128, repeats: int = 3) -> float:
    """CPU ms per patch of the ONNX graph alone, one intra-op thread, ``batch`` patches per run (best of
    ``repeats`` passes over ``x``, after a warm-up pass)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(onnx_path), sess_options=opts, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    best = math.inf
    for i in range(repeats + 1):
        start = time.process_time()
        for a in range(0, len(x), batch):
            session.run(None, {name: x[a:a + batch]})
        if i:
            best = min(best, time.process_time() - start)
    return 1e3 * best / len(x)


#: Calibration batch size: the histogram calibrators stack batches, so all must have this size.
CALIBRATION_BATCH = 128


class _Calibration:
    """onnxruntime ``CalibrationDataReader`` over prepared float inputs, ``batch`` at a time."""

    def __init__(self, input_name: str, x: np.ndarray, batch: int = CALIBRATION_BATCH):
        self._feeds = iter([{input_name: x[a:a + batch]} for a in range(0, len(x), batch)])

    def get_next(self):
        return next(self._feeds, None)


#: Weight formats: int8 (full range), int8 restricted to 7 bits (``reduce_range``: onnxruntime's AVX2 / AVX-512
#: u8·s8 kernel, VPMADDUBSW, can saturate its 16-bit sums with full-range weights), uint8 (u8·u8 kernel, no
#: saturation).
WEIGHTS = {"s8": ("QInt8", False), "s8-7bit": ("QInt8", True), "u8": ("QUInt8", False)}
WEIGHT_NOTES = {"s8": "int8", "s8-7bit": "int8 in 7 bits (no u8·s8 saturation on AVX2)", "u8": "uint8"}


def quantise(float_onnx: Path, out_onnx: Path, x_calib: np.ndarray, method: str, keep_float: tuple[str, ...],
             weights: str = "s8-7bit") -> None:
    """QDQ static quantisation of ``float_onnx`` to ``out_onnx``: per-channel symmetric weights (``weights``, a key
    of :data:`WEIGHTS`), uint8 activations with asymmetric ranges (also for percentile calibration, whose
    onnxruntime default is symmetric) from ``x_calib`` by ``method`` (minmax, entropy, percentile);
    ``keep_float`` names layers left in float: "first" (the first convolution), "last" (the classifier)."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(float_onnx), str(pre), skip_symbolic_shape=True)
        graph = onnx.load(str(pre)).graph
        computing = [n for n in graph.node if n.op_type in ("Conv", "Gemm", "MatMul")]
        exclude = ([computing[0].name] if "first" in keep_float else []) + \
                  ([computing[-1].name] if "last" in keep_float else [])
        weight_type, reduce_range = WEIGHTS[weights]
        quantize_static(str(pre), str(out_onnx), _Calibration(graph.input[0].name, x_calib),
                        quant_format=QuantFormat.QDQ, per_channel=True, reduce_range=reduce_range,
                        activation_type=QuantType.QUInt8, weight_type=getattr(QuantType, weight_type),
                        nodes_to_exclude=exclude, calibrate_method=methods[method],
                        extra_options={"WeightSymmetric": True, "CalibPercentile": 99.999,
                                       "CalibTensorRangeSymmetric": False, "CalibMaxIntermediateOutputs": 4})


def compare(det_float, det_int8, sets: dict, p_float: list[np.ndarray]) -> dict:
    """Differences of the INT8 detector from the float one on the evaluation patches (see the module docstring)."""
    from micromets import normalise

    p_int8 = probabilities(det_int8, sets["eval"])
    rows, by_source = [], {}
    for entry, pf, pq in zip(sets["eval"], p_float, p_int8):
        scored = normalise.tissue_fraction(entry["patches"], det_float._tissue_beta) >= det_float._tissue_min_fraction
        d = np.abs(pq - pf)[scored]
        flips = ((pq >= 0.5) != (pf >= 0.5))[scored]
        rows.append((entry, pf, pq))
        agg = by_source.setdefault(entry["source"], {"n": 0, "max_abs_dp": 0.0, "sum_abs_dp": 0.0, "flips": 0})
        agg["n"] += int(scored.sum())
        agg["max_abs_dp"] = max(agg["max_abs_dp"], float(d.max(initial=0.0)))
        agg["sum_abs_dp"] += float(d.sum())
        agg["flips"] += int(flips.sum())
    for agg in by_source.values():
        agg["mean_abs_dp"] = agg.pop("sum_abs_dp") / max(agg["n"], 1)
        agg["flip_share"] = agg["flips"] / max(agg["n"], 1)
    n = sum(a["n"] for a in by_source.values())
    c16 = [(e["label"], pf.max(), pq.max()) for e, pf, pq in rows if e["source"] == "camelyon16"]
    labels = np.array([c[0] for c in c16])
    windows = [(np.full(len(pf), e["label"]), pf, pq) for e, pf, pq in rows if e["source"] == "camelyon16"]
    w_labels, w_float, w_int8 = (np.concatenate(a) for a in zip(*windows))
    return {"n_patches": n,
            "max_abs_dp": max(a["max_abs_dp"] for a in by_source.values()),
            "mean_abs_dp": sum(a["mean_abs_dp"] * a["n"] for a in by_source.values()) / n,
            "flips": sum(a["flips"] for a in by_source.values()),
            "flip_share": sum(a["flips"] for a in by_source.values()) / n,
            "camelyon16_auc_float": auc(np.array([c[1] for c in c16]), labels),
            "camelyon16_auc_int8": auc(np.array([c[2] for c in c16]), labels),
            "camelyon16_window_auc_float": auc(w_float, w_labels),
            "camelyon16_window_auc_int8": auc(w_int8, w_labels),
            "by_source": by_source}


def demo_check(float_dir: Path, int8_dir: Path, manifest: Path = ROOT / "demo" / "manifest.csv") -> dict:
    """The bundled demo case run with the float and the INT8 model, in both scan modes: node classes, pN stage and
    every lesion's diameter (mm) of both, and whether they agree (same classes and stage, same number of lesions
    per slide, diameters within one heatmap cell)."""
    from micromets.case import run_case
    from micromets.model import Detector

    out: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        for scan_mode in ("thorough", "fast"):
            runs = {}
            for label, folder in (("float", float_dir), ("int8", int8_dir)):
                det = Detector.load(folder)
                case = run_case(manifest, Path(tmp) / f"{scan_mode}-{label}", detector=det, report=False,
                                scan_mode=scan_mode)[0]
                slides = {}
                for result_json in sorted((Path(tmp) / f"{scan_mode}-{label}").glob("*/*/result.json")):
                    result = json.loads(result_json.read_text())
                    slides[result["slide_id"]] = sorted(les["diameter_mm"] for les in result["lesions"])
                runs[label] = {"pn_stage": case["pn_stage"], "node_classes": [n["node_class"] for n in case["nodes"]],
                               "lesion_diameters_mm": slides}
            cell_mm = det.cell_um / 1000
            f, q = runs["float"], runs["int8"]
            same_lesions = all(len(f["lesion_diameters_mm"][k]) == len(q["lesion_diameters_mm"].get(k, []))
                               and all(abs(a - b) <= cell_mm for a, b in zip(f["lesion_diameters_mm"][k],
                                                                               q["lesion_diameters_mm"][k]))
                               for k in f["lesion_diameters_mm"])
            out[scan_mode] = {**runs, "agree": f["pn_stage"] == q["pn_stage"]
                              and f["node_classes"] == q["node_classes"] and same_lesions}
            print(f"demo case, {scan_mode}: float {f['pn_stage']} {f['node_classes']}, int8 {q['pn_stage']} "
                  f"{q['node_classes']}; lesions within one cell ({cell_mm} mm): {same_lesions}", flush=True)
    return out


def main() -> None:
    from micromets.model import Detector

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--float-model", type=Path, required=True,
                        help="folder of the float model (model.onnx + model.json) to quantise")
    parser.add_argument("--data-root", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--out", type=Path, default=HERE / "work" / "int8")
    parser.add_argument("--methods", default="percentile",
                        help="calibration methods to try (minmax, entropy, percentile)")
    parser.add_argument("--keep-float", default="first+last",
                        help="comma-separated variants of layers kept in float: none, first, last, first+last")
    parser.add_argument("--weights", default="s8-7bit", help=f"weight formats to try ({', '.join(WEIGHTS)})")
    args = parser.parse_args()
    if not (args.data_root / "camelyon16_patches").is_dir():
        raise SystemExit(f"{args.data_root}: no camelyon16_patches (pass --data-root)")
    args.out.mkdir(parents=True, exist_ok=True)
    source = args.float_model
    if (source / "model.json").is_file() and "quantisation" in json.loads((source / "model.json").read_text()):
        raise SystemExit(f"{source}: already quantised; pass the float model (see the docstring)")
    if args.out.resolve() == source.resolve():
        raise SystemExit("--out must differ from --float-model (the float model is compared with the INT8 one)")
    det_float = Detector.load(source, threads=1)
    start = time.process_time()
    sets = real_sets(det_float, args.data_root)
    x_calib = np.concatenate([network_input(det_float, e) for e in sets["calib"]])
    x_calib = x_calib[:len(x_calib) // CALIBRATION_BATCH * CALIBRATION_BATCH]  # whole batches only
    x_eval = np.concatenate([network_input(det_float, e) for e in sets["eval"]])
    print(f"patches: calibration {len(x_calib)}, evaluation {len(x_eval)} network inputs "
          f"({time.process_time() - start:.0f} CPU s)", flush=True)
    p_float = probabilities(det_float, sets["eval"])
    report = {"date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "source_model": str(source),
              "n_calibration_patches": len(x_calib), "n_evaluation_patches": len(x_eval),
              "float_network_cpu_ms_per_patch": network_cpu_ms(source / "model.onnx", x_eval[:1024]),
              "candidates": []}
    print(f"float network: {report['float_network_cpu_ms_per_patch']:.3f} CPU ms/patch", flush=True)
    best = None
    with tempfile.TemporaryDirectory() as tmp:
        for method, keep, weights in itertools.product(args.methods.split(","), args.keep_float.split(","),
                                                       args.weights.split(",")):
            keep_float = tuple(k for k in keep.split("+") if k != "none")
            folder = Path(tmp) / f"{method}-{keep}-{weights}"
            folder.mkdir()
            quantise(source / "model.onnx", folder / "model.onnx", x_calib, method, keep_float, weights)
            (folder / "model.json").write_text((source / "model.json").read_text())
            det_int8 = Detector.load(folder, threads=1)
            row = {"method": method, "keep_float": list(keep_float), "weights": weights,
                   **compare(det_float, det_int8, sets, p_float),
                   "network_cpu_ms_per_patch": network_cpu_ms(folder / "model.onnx", x_eval[:1024])}
            report["candidates"].append(row)
            print(f"{method} keep-float {keep} weights {weights}: max |dp| {row['max_abs_dp']:.4f}, "
                  f"mean {row['mean_abs_dp']:.4f}, "
                  f"flips {row['flips']}/{row['n_patches']} ({100 * row['flip_share']:.2f} %), AUC "
                  f"{row['camelyon16_auc_int8']:.4f} (float {row['camelyon16_auc_float']:.4f}; per window "
                  f"{row['camelyon16_window_auc_int8']:.4f} vs {row['camelyon16_window_auc_float']:.4f}), network "
                  f"{row['network_cpu_ms_per_patch']:.3f} CPU ms/patch", flush=True)
            key = (row["flips"], row["max_abs_dp"])
            if best is None or key < best[0]:
                best = (key, row, (folder / "model.onnx").read_bytes())
    _, row, onnx_bytes = best
    (args.out / "model.onnx").write_bytes(onnx_bytes)
    card = json.loads((source / "model.json").read_text())
    source_version = card["version"]
    major, minor, patch = (int(x) for x in source_version.split("."))
    card["version"] = f"{major}.{minor}.{patch + 1}"  # the INT8 graph of float X.Y.Z ships as X.Y.Z+1
    card["quantisation"] = {
        "what": f"INT8 static quantisation of {card['name']} {source_version} (onnxruntime quantize_static, QDQ, "
                f"per-channel symmetric weights {WEIGHT_NOTES[row['weights']]}, uint8 activations; calibration "
                f"{row['method']}"
                + (f"; kept in float: {', '.join(row['keep_float'])} layer" if row["keep_float"] else "") + ")",
        "calibration_set": f"{len(x_calib)} real tissue patches (96 px at 0.5 µm/px, Macenko-normalised per "
                           "image/slide as the detector does, tissue filter passed) from camelyon16_patches, "
                           "camelyon17_tiles, crc_tiles and slides/cmu_small_region.svs, cut ¼, ½ and ¾ of a patch "
                           "off the evaluation windows",
        "evaluation": {k: row[k] for k in ("n_patches", "max_abs_dp", "mean_abs_dp", "flips", "flip_share",
                                           "camelyon16_auc_float", "camelyon16_auc_int8",
                                           "camelyon16_window_auc_float", "camelyon16_window_auc_int8")},
        "metrics_note": f"metrics are those of the float {source_version} model; the INT8 graph differs from it "
                        "by at most max_abs_dp on the evaluation patches",
        "float_onnx_vs_torch_max_abs_diff": card.pop("onnx_vs_torch_max_abs_diff", None),
        "command": f"PYTHONPATH=src .venv/bin/python bench/quantise.py --float-model DIR --out {args.out}, "
                   "DIR = the float model built by this card's command (with --out DIR)",
    }
    (args.out / "model.json").write_text(json.dumps(card, indent=2, ensure_ascii=False) + "\n")
    report["chosen"] = {k: row[k] for k in ("method", "keep_float", "weights")}
    report["demo_case"] = demo_check(source, args.out)
    card["quantisation"]["demo_case_agrees"] = {m: report["demo_case"][m]["agree"] for m in ("thorough", "fast")}
    (args.out / "model.json").write_text(json.dumps(card, indent=2, ensure_ascii=False) + "\n")
    (args.out / "report.json").write_text(json.dumps(report, indent=1))
    print(f"written {args.out / 'model.onnx'} ({row['method']}, keep float {row['keep_float']}) and report.json")


if __name__ == "__main__":
    main()
