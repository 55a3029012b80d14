"""`micromets bench`: the whole system on phantom slides of known truth — accuracy, speed and memory.

What is measured (one JSON report + one markdown table per run, `bench/results/<date>.json` / `.md`):

Accuracy, from the real pipeline (`analyze.analyze_slide`) on every phantom of a set (`phantom.build` manifest):

- lesion matching: a detected lesion HITS a true lesion when its outline intersects the true outline dilated by
  75/2 µm (the CAMELYON16 reference-mask dilation, ≈ 5 tumour cells; Bejnordi et al., JAMA 2017;318:2199); a
  true lesion counts once, scored by the highest score of the detections that hit it; a detection that hits no
  true lesion is a false positive (FP). The detections are the result's lesions and its unconfirmed candidates
  (`unconfirmed_lesions`), scored by `confirmed_probability` (by `max_probability` where a result has none), so
  FROC and sensitivity rank every candidate, while node classes, kappa and the counted false-positive lesions
  (`n_false_positive_lesions`) are those of the pipeline's operating point;
- CAMELYON16 FROC (mean sensitivity at 1/4, 1/2, 1, 2, 4, 8 FP per slide; ITC lesions — fitted-ellipse major
  axis < 275 µm — are neither hits nor FPs) and slide-level AUC (slide score = highest detection score),
  with the project's own `evaluation.camelyon16`;
- per-size-class lesion sensitivity (ITC, micro, macro) at the lowest probability threshold that keeps the mean
  FP count <= 1 per slide;
- diameter error: detected minus true maximum Feret diameter (mm) of every hit lesion, per size class;
- node-class confusion (truth × pipeline, CAMELYON17 labels) and, for phantoms grouped into patients, the
  CAMELYON17 quadratic-weighted kappa of the pN stages (`evaluation.camelyon17`).

Speed and memory, per slide and mode: wall seconds, seconds per cm² of tissue, patches/s, share of time in
reading (time the model waited for patches), inference and post-processing, and peak resident memory. Each run
is a fresh process (spawned), so its peak RSS belongs to that slide alone. The speed slides come in two sizes
(the second has 4× the area) to show cost growing linearly with tissue while memory stays flat.

Baseline, in the same run on the same speed slides: the simplest correct approach — every tissue cell read at
level 0 (full fine resolution) with one `read_region` per patch, resized to the model's µm/px, scored one patch
at a time (batch 1), no prefetching — so the speed-up is a ratio measured on one machine at one time. The
baseline computes the heatmap only (tissue mask, grid, stain reference, per-cell scores), so the speed-up compares
it with the pipeline's time before post-processing (total − post); the heatmaps' largest difference is reported
beside it (the pipeline reads the nearest pyramid level, the baseline level 0, so they differ a little).

Tile provenance (which tiles the model has seen) is recorded in the report from the phantom manifest and the
model card (`training_data`, `split`).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import os
import pickle
import platform
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import shapely

from micromets.errors import MicrometsError

FROC_DILATION_UM = 75.0 / 2
SIZE_CLASSES = ("itc", "micro", "macro")
NODE_CLASSES = ("negative", "itc", "micro", "macro")
BUNDLED_TILES = Path(__file__).resolve().parent / "data" / "tiles"
BUNDLED_TILES_MPP = 0.243

#: The default phantom set: (patient, node, lesions, size_mm, seed, speed role). Level 0 at 0.243 µm/px (40×).
DEFAULT_SET = (
    ("bench_p1", "1", "none", (1.5, 1.2), 101, ""),
    ("bench_p1", "2", "none", (1.5, 1.2), 102, ""),
    ("bench_p2", "1", "itc:1", (1.5, 1.2), 201, ""),
    ("bench_p2", "2", "none", (1.5, 1.2), 202, ""),
    ("bench_p3", "1", "micro:1@0.7,itc:1", (2.0, 1.6), 301, "small"),
    ("bench_p3", "2", "itc:2", (1.5, 1.2), 302, ""),
    ("bench_p4", "1", "macro:1@2.2,itc:1", (3.6, 3.2), 401, ""),
    ("bench_p4", "2", "micro:1@1.0", (2.0, 1.6), 402, ""),
    ("bench_p5", "1", "micro:1@1.5,micro:1@0.4,itc:2", (4.0, 3.2), 501, "large"),  # 4x the area of "small"
    ("bench_p6", "1", "none", (1.5, 1.2), 601, ""),
    ("bench_p6", "2", "micro:1@0.5", (2.0, 1.6), 602, ""),
    ("bench_p7", "1", "none", (2.0, 1.6), 701, ""),
    ("bench_p7", "2", "none", (1.5, 1.2), 702, ""),
    ("bench_p8", "1", "macro:1@2.4", (4.0, 3.6), 801, ""),
    ("bench_p8", "2", "none", (2.0, 1.6), 802, ""),
)
#: Every default phantom has trabeculae and stroma islands of real fibrous stroma besides its capsule, and real
#: adipose tissue as perinodal fat (the bundled Kather 2016 STROMA and ADIPOSE tiles; the report says whether the
#: model under test trained on them, :func:`stroma_and_fat_seen`): 7 of the 15 nodes are negative, so a detector
#: that calls stroma or fat tumour fails the bench.
PHANTOM_STROMA = True
#: --large adds a CAMELYON-size slide (100,000 × 200,000 px at 0.243 µm/px); building it takes hours.
LARGE_SLIDE = ("bench_large", "1", "macro:1,micro:2,itc:3", (24.3, 48.6), 901, "camelyon")
DEFAULT_MPP = 0.243


# ----------------------------------------------------------------------------------------------- phantom set


def _tiles_digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.iterdir() if p.is_file()):
        digest.update(path.name.encode())
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def _phantom_code_digest() -> str:
    digest = hashlib.sha256()
    for path in sorted((Path(__file__).resolve().parent / "phantom").glob("*.py")):
        digest.update(path.read_bytes())
    return digest.hexdigest()


def build_phantom_set(work_dir: str | Path, normal_tiles: Path, tumour_tiles: Path, tiles_mpp: float,
                      large: bool = False, spec=DEFAULT_SET, l0_mpp: float = DEFAULT_MPP, log=print) -> Path:
    """Build (or reuse, when a set of the same hash is complete) the default phantom set; returns its manifest.

    The hash covers the set spec, the resolution, the tile files and the phantom code, so a change to any of
    them builds a new set in `work_dir/phantoms-<hash>/`.
    """
    from micromets.phantom.build import CAPSULE_TILES, FAT_TILES, MANIFEST, build_phantom, read_phantom_manifest

    entries = tuple(spec) + ((LARGE_SLIDE,) if large else ())
    key = json.dumps([entries, l0_mpp, tiles_mpp, _tiles_digest(Path(normal_tiles)),
                      _tiles_digest(Path(tumour_tiles)), _tiles_digest(CAPSULE_TILES), _tiles_digest(FAT_TILES),
                      PHANTOM_STROMA, _phantom_code_digest()], default=str)
    set_dir = Path(work_dir) / f"phantoms-{hashlib.sha256(key.encode()).hexdigest()[:12]}"
    manifest = set_dir / MANIFEST
    done = set()
    if manifest.is_file():
        done = {r["name"] for r in read_phantom_manifest(manifest) if Path(r["slide_path"]).is_file()}
    for patient, node, lesions, size_mm, seed, _role in entries:
        name = f"{patient}_node{node}"
        if name in done:
            continue
        start = time.perf_counter()
        build_phantom(set_dir, normal_tiles, tumour_tiles, tiles_mpp, lesions, size_mm, l0_mpp, seed, name,
                      patient=patient, node=node, stroma=PHANTOM_STROMA, fat_tiles=FAT_TILES)
        log(f"bench: built phantom {name} ({lesions}, {size_mm[0]} x {size_mm[1]} mm) "
            f"in {time.perf_counter() - start:.1f} s")
    (set_dir / "speed_roles.json").write_text(json.dumps(
        {f"{p}_node{n}": role for p, n, _l, _s, _seed, role in entries if role}))
    return manifest


# ----------------------------------------------------------------------------------------------- truth and scoring


@dataclass
class SlideTruth:
    """Ground truth of one phantom: outlines (level-0 px), their classes and maximum Feret diameters (mm)."""

    name: str
    patient: str
    node: str
    node_class: str
    l0_mpp: float
    outlines_l0: list
    classes: list[str]
    diameters_mm: list[float]


def read_truths(manifest: str | Path) -> list[SlideTruth]:
    """Ground truth of every phantom of a phantom manifest (outlines from its ASAP XML)."""
    from micromets.annotations import read_asap_xml
    from micromets.phantom.build import read_phantom_manifest

    truths = []
    for row in read_phantom_manifest(manifest):
        outlines = read_asap_xml(row["xml_path"]).tumour if row.get("xml_path") else []
        classes = [c for c in row.get("lesion_classes", "").split(";") if c]
        diameters = [float(d) for d in row.get("lesion_diameters_mm", "").split(";") if d]
        if not (len(outlines) == len(classes) == len(diameters)):
            raise MicrometsError(f"{manifest}: phantom {row['name']}: {len(outlines)} outlines in its XML but "
                                 f"{len(diameters)} lesion diameters in the manifest")
        truths.append(SlideTruth(row["name"], row.get("patient", ""), row.get("node", ""), row["node_class"],
                                 float(row["l0_mpp"]), outlines, classes, diameters))
    return truths


def _detections(result: dict) -> tuple[list, np.ndarray, np.ndarray, np.ndarray]:
    """Detections of a result.json dict, the counted lesions then the unconfirmed candidates: outlines (level-0
    px), scores (``confirmed_probability`` where the pipeline confirmed, else ``max_probability``), diameters
    (mm) and whether each is a counted lesion."""
    geoms, probs, diameters, counted = [], [], [], []
    for is_lesion, key in ((True, "lesions"), (False, "unconfirmed_lesions")):
        for lesion in result.get(key, []):
            parts = [shapely.Polygon(ring) for ring in lesion["l0_outline"] if len(ring) >= 3]
            if not parts:
                continue
            geoms.append(shapely.make_valid(shapely.MultiPolygon(parts) if len(parts) > 1 else parts[0]))
            probs.append(float(lesion.get("confirmed_probability", lesion.get("max_probability")) or 0.0))
            diameters.append(float(lesion["diameter_mm"]))
            counted.append(is_lesion)
    return geoms, np.asarray(probs, float), np.asarray(diameters, float), np.asarray(counted, bool)


def match_slide(truth: SlideTruth, result: dict) -> dict:
    """Hits between the detections of one slide and its true lesions (see the module docstring).

    Returns `hit` (n_det × n_true bool), `probs`, `det_diameters_mm`, `is_fp` (detections hitting nothing) and
    `counted` (detections that are lesions of the result, not unconfirmed candidates).
    """
    geoms, probs, diameters, counted = _detections(result)
    dilated = shapely.buffer(np.asarray(truth.outlines_l0, dtype=object), FROC_DILATION_UM / truth.l0_mpp)
    if geoms and len(dilated):
        hit = shapely.intersects(np.asarray(geoms, dtype=object)[:, None], dilated[None, :])
    else:
        hit = np.zeros((len(geoms), len(truth.outlines_l0)), bool)
    return {"hit": hit, "probs": probs, "det_diameters_mm": diameters, "is_fp": ~hit.any(axis=1),
            "counted": counted}


def _sensitivity_at_fp(truths: list[SlideTruth], matches: list[dict], max_fp_per_slide: float) -> dict:
    """Per-size-class sensitivity at the lowest threshold whose mean FP count per slide is <= the limit."""
    fp_probs = np.sort(np.concatenate([m["probs"][m["is_fp"]] for m in matches] + [np.zeros(0)]))[::-1]
    allowed = int(math.floor(max_fp_per_slide * len(truths) + 1e-9))
    # keep detections strictly above the (allowed+1)-th highest FP probability
    floor = fp_probs[allowed] if allowed < len(fp_probs) else -np.inf
    out = {}
    for size_class in SIZE_CLASSES:
        n_true = n_hit = 0
        for truth, match in zip(truths, matches):
            for j, cls in enumerate(truth.classes):
                if cls != size_class:
                    continue
                n_true += 1
                scores = match["probs"][match["hit"][:, j]]
                n_hit += bool(scores.size and scores.max() > floor)
        out[size_class] = {"n_lesions": n_true, "sensitivity": (n_hit / n_true) if n_true else None}
    out["threshold_probability_above"] = None if floor == -np.inf else float(floor)
    return out


def _diameter_errors(truths: list[SlideTruth], matches: list[dict]) -> dict:
    """Detected minus true maximum Feret diameter (mm) of each hit lesion (largest hitting counted lesion of the
    result), by class."""
    errors: dict[str, list[float]] = {c: [] for c in SIZE_CLASSES}
    for truth, match in zip(truths, matches):
        for j, (cls, true_mm) in enumerate(zip(truth.classes, truth.diameters_mm)):
            hitting = match["det_diameters_mm"][match["hit"][:, j] & match["counted"]]
            if hitting.size:
                errors[cls].append(float(hitting.max()) - true_mm)
    return {
        cls: {"n": len(v), "mean_error_mm": float(np.mean(v)) if v else None,
              "mean_abs_error_mm": float(np.mean(np.abs(v))) if v else None,
              "max_abs_error_mm": float(np.max(np.abs(v))) if v else None}
        for cls, v in errors.items()
    }


def _froc_and_auc(truths: list[SlideTruth], results: list[dict]) -> dict:
    """CAMELYON16 FROC and slide AUC by `evaluation.camelyon16`, one point detection per detected lesion.

    A detection's point is `shapely.point_on_surface` of its outline (always inside it), its probability the
    detection's score (`_detections`). The evaluation mask level is the one nearest the challenge's 7.776 µm/px
    (level 5 of a 0.243 µm/px slide), so phantoms of any resolution are judged at the same scale.
    """
    from sklearn.metrics import roc_auc_score

    from micromets.evaluation import camelyon16

    target_mpp = camelyon16.CAMELYON16_L0_MPP * 2**camelyon16.EVALUATION_LEVEL
    fp_all, tp_all, slide_scores = [], [], []
    for truth, result in zip(truths, results):
        geoms, probs, _, _ = _detections(result)
        points = shapely.get_coordinates(shapely.point_on_surface(np.asarray(geoms, dtype=object)))
        detections = np.column_stack([probs, points]) if geoms else np.zeros((0, 3))
        reference = None
        if truth.outlines_l0:
            level = max(0, round(math.log2(target_mpp / truth.l0_mpp)))
            reference = camelyon16.evaluation_mask(truth.outlines_l0, truth.l0_mpp, level)
        fp, tp = camelyon16.score_detections(detections, reference)
        fp_all.append(fp)
        tp_all.append(tp)
        slide_scores.append(float(probs.max()) if probs.size else 0.0)
    tp = np.concatenate(tp_all)
    out = {"froc": None, "froc_sensitivity_at": None, "n_froc_lesions": int(tp.size)}
    if tp.size:
        curve = camelyon16.froc(np.concatenate(fp_all), tp, len(truths))
        out["froc"], out["froc_sensitivity_at"] = curve["froc"], curve["sensitivity_at"]
    has_tumour = [bool(t.outlines_l0) for t in truths]
    out["slide_auc"] = (float(roc_auc_score(has_tumour, slide_scores)) if len(set(has_tumour)) == 2 else None)
    return out


def score(truths: list[SlideTruth], results: list[dict]) -> dict:
    """All accuracy numbers of the bench for slide results (result.json dicts) in the order of `truths`."""
    from micromets.evaluation.camelyon17 import quadratic_kappa
    from micromets.rules.camelyon17 import stage_patient

    if len(truths) != len(results):
        raise MicrometsError(f"bench: {len(truths)} phantoms but {len(results)} results")
    matches = [match_slide(t, r) for t, r in zip(truths, results)]
    confusion = np.zeros((4, 4), int)
    for truth, result in zip(truths, results):
        confusion[NODE_CLASSES.index(truth.node_class), NODE_CLASSES.index(result["node_class"])] += 1
    patients: dict[str, tuple[list[str], list[str]]] = {}
    for truth, result in zip(truths, results):
        if truth.patient:
            ref, got = patients.setdefault(truth.patient, ([], []))
            ref.append(truth.node_class)
            got.append(result["node_class"])
    stages = {p: (stage_patient(ref), stage_patient(got)) for p, (ref, got) in patients.items()}
    return {
        "n_slides": len(truths),
        "n_false_positives": int(sum(m["is_fp"].sum() for m in matches)),
        "n_false_positive_lesions": int(sum((m["is_fp"] & m["counted"]).sum() for m in matches)),
        **_froc_and_auc(truths, results),
        "sensitivity_at_1fp_per_slide": _sensitivity_at_fp(truths, matches, 1.0),
        "diameter_error": _diameter_errors(truths, matches),
        "node_confusion": {"labels": list(NODE_CLASSES), "rows_truth_cols_predicted": confusion.tolist()},
        "node_accuracy": float(np.trace(confusion) / max(1, confusion.sum())),
        "per_slide": [{"name": t.name, "truth": t.node_class, "predicted": r["node_class"],
                       "false_positive_lesions": int((m["is_fp"] & m["counted"]).sum()),
                       "false_positive_candidates": int(m["is_fp"].sum())}
                      for t, r, m in zip(truths, results, matches)],
        "patients": {p: {"truth": ref, "predicted": got} for p, (ref, got) in stages.items()},
        "kappa": (quadratic_kappa([r for r, _ in stages.values()], [g for _, g in stages.values()])
                  if stages else None),
    }


def truth_result(truth: SlideTruth, detected: bool = True) -> dict:
    """A result.json-shaped dict that reports the ground truth itself ("perfect") or nothing ("empty").

    Scored through `score` like a real result, it gives the bench's best and worst possible numbers.
    """
    from micromets.measure import measure_lesions

    if not detected or not truth.outlines_l0:
        return {"node_class": "negative", "lesions": [], "largest_deposit_mm": None}
    lesions = []
    for geom, cls in zip(truth.outlines_l0, truth.classes):
        measured = measure_lesions([geom], truth.l0_mpp)[0]
        lesions.append({"l0_outline": [np.asarray(p.exterior.coords).tolist() for p in shapely.get_parts(geom)],
                        "diameter_mm": measured.diameter_mm, "max_probability": 1.0, "class": cls})
    return {"node_class": truth.node_class, "lesions": lesions,
            "largest_deposit_mm": max(les["diameter_mm"] for les in lesions)}


# ----------------------------------------------------------------------------------------------- running


def cpu_model() -> str:
    """The CPU's model name (Linux ``/proc/cpuinfo``, else ``platform.processor()``): timings from machines of two
    models are not comparable (the same code ran 1.6 × slower on one 2-core VM than on another)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _peak_rss_mb() -> float:
    """Peak resident memory of this process (MB).

    Linux: `VmHWM` of /proc/self/status, which restarts with the new address space at `exec`; `ru_maxrss`
    would also carry the peak of the parent the process was forked from. Elsewhere `ru_maxrss`.
    """
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0  # kB
    scale = 1024.0 * 1024.0 if sys.platform == "darwin" else 1024.0  # bytes on macOS, KiB elsewhere
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale


def _analyze_job(slide_path: str, out_dir: str, mode: str, model_dir: str | None) -> dict:
    """Child process: one pipeline run; returns result.json plus wall time and this process's peak RSS."""
    from micromets.analyze import analyze_slide
    from micromets.model import Detector

    detector = Detector.load(model_dir)
    start = time.perf_counter()
    result = analyze_slide(slide_path, out_dir, mode=mode, detector=detector)
    return {"result": result, "wall_s": time.perf_counter() - start, "peak_rss_mb": _peak_rss_mb()}


def baseline_heatmap(slide_path: str, model_dir: str | None) -> dict:
    """The simplest correct approach: per tissue cell one level-0 `read_region`, resize, batch-1 inference.

    Same tissue mask, grid, stain reference and model as the pipeline; returns timing, patch count, peak RSS
    and the heatmap (to compare with the pipeline's).
    """
    from PIL import Image

    from micromets.model import Detector
    from micromets.slide import open_slide
    from micromets.tiles import tile_grid
    from micromets.tissue import tissue_mask

    detector = Detector.load(model_dir)
    start = time.perf_counter()
    read_s = inference_s = 0.0
    with open_slide(slide_path) as slide:
        tissue = tissue_mask(slide)
        detector.set_stain_reference(tissue.rgb[tissue.mask][None])
        grid = tile_grid(slide, tissue, detector.patch_px * detector.input_mpp)
        h_prob = np.zeros(grid.shape, np.float32)
        for h_r, h_c in np.argwhere(grid.h_tissue):
            t0 = time.perf_counter()
            l0_x, l0_y = round(h_c * grid.l0_cell), round(h_r * grid.l0_cell)
            l0_w = round((h_c + 1) * grid.l0_cell) - l0_x
            l0_h = round((h_r + 1) * grid.l0_cell) - l0_y
            rgb = slide.read_region(l0_x, l0_y, 0, l0_w, l0_h)
            patch = np.asarray(Image.fromarray(rgb).resize((detector.patch_px, detector.patch_px),
                                                           Image.Resampling.BOX))
            t1 = time.perf_counter()
            h_prob[h_r, h_c] = detector.predict(patch[None])[0]
            inference_s += time.perf_counter() - t1
            read_s += t1 - t0
    return {"wall_s": time.perf_counter() - start, "read_s": read_s, "inference_s": inference_s,
            "n_patches": int(grid.h_tissue.sum()), "peak_rss_mb": _peak_rss_mb(), "h_prob": h_prob,
            "tissue_area_mm2": tissue.area_mm2}


_JOBS = {"analyze": "_analyze_job", "baseline": "baseline_heatmap"}


def _child_main() -> None:
    """Entry of a bench child process: `python -c ... ARGS.json` runs one job and pickles its return value."""
    request = json.loads(Path(sys.argv[1]).read_text())
    try:
        value = {"ok": globals()[_JOBS[request["job"]]](*request["args"])}
    except MicrometsError as err:
        value = {"error": str(err)}
    with open(request["out"], "wb") as fh:
        pickle.dump(value, fh)


def _in_fresh_process(job: str, *args):
    """Run bench job `job` ("analyze" or "baseline") in a new Python process, so that its peak RSS is its own.

    A `MicrometsError` in the child is raised again here; a crash raises `RuntimeError` with its stderr.
    """
    with tempfile.TemporaryDirectory(prefix="micromets-bench-") as tmp:
        request, out = Path(tmp) / "request.json", Path(tmp) / "out.pickle"
        request.write_text(json.dumps({"job": job, "args": list(args), "out": str(out)}))
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[1]),
                                                          env.get("PYTHONPATH")]))
        proc = subprocess.run([sys.executable, "-c", "from micromets.bench import _child_main; _child_main()",
                               str(request)], env=env, capture_output=True, text=True)
        if proc.returncode or not out.is_file():
            raise RuntimeError(f"bench {job} job failed (exit {proc.returncode}): {proc.stderr[-2000:]}")
        with open(out, "rb") as fh:
            value = pickle.load(fh)
    if "error" in value:
        raise MicrometsError(value["error"])
    return value["ok"]


def _speed_row(name: str, role: str, mode: str, run: dict) -> dict:
    result = run["result"]
    timing = result.get("timing_s", {})
    total = float(timing.get("total") or run["wall_s"])
    n_patches = int(timing.get("n_patches") or 0)
    tissue_cm2 = result["tissue_area_mm2"] / 100.0
    shares = {k: (float(timing[src]) / total if total and timing.get(src) is not None else None)
              for k, src in (("read_share", "read_wait"), ("inference_share", "inference"), ("post_share", "post"))}
    return {"slide": name, "size": role, "mode": mode, "l0_width": result["l0_width"],
            "l0_height": result["l0_height"], "tissue_area_mm2": result["tissue_area_mm2"],
            "seconds": round(total, 3), "seconds_before_post": round(total - float(timing.get("post") or 0.0), 3),
            "seconds_per_cm2": round(total / tissue_cm2, 2) if tissue_cm2 else None,
            "n_patches": n_patches, "patches_per_s": round(n_patches / total, 1) if total else None,
            "peak_rss_mb": round(run["peak_rss_mb"], 1), **{k: (round(v, 3) if v is not None else None)
                                                            for k, v in shares.items()}}


def _tile_sources(set_dir: Path, rows) -> dict:
    """Source slides of the tiles each phantom was built from (file-name prefix before the level-0 x_y)."""
    sources: dict[str, list[str]] = {}
    for row in rows:
        for key in ("normal_tiles", "tumour_tiles"):
            folder = (set_dir / row.get(key, "")).resolve()
            if str(folder) in sources or not folder.is_dir():
                continue
            stems = {"_".join(p.stem.split("_")[:-2]) or p.stem for p in folder.iterdir() if p.is_file()
                     and p.suffix.lower() in (".png", ".jpg", ".jpeg", ".tif", ".tiff")}
            sources[str(folder)] = sorted(stems)
    return sources


def run_bench(phantoms: str | Path | None = None, out_dir: str | Path = "bench/results",
              work_dir: str | Path = "bench/work", model_dir: str | Path | None = None,
              modes: tuple[str, ...] = ("thorough",), large: bool = False, baseline: bool = True,
              normal_tiles: str | Path | None = None, tumour_tiles: str | Path | None = None,
              tiles_mpp: float = BUNDLED_TILES_MPP, log=print) -> dict:
    """Run the bench; write `out_dir/<date>.json` and `.md`; return the report dict."""
    from micromets import __version__

    work_dir, out_dir = Path(work_dir), Path(out_dir)
    started = _dt.datetime.now(_dt.timezone.utc)
    if phantoms is None:
        normal = Path(normal_tiles or BUNDLED_TILES / "normal")
        tumour = Path(tumour_tiles or BUNDLED_TILES / "tumor")
        manifest = build_phantom_set(work_dir, normal, tumour, tiles_mpp, large, log=log)
    else:
        manifest = Path(phantoms)
        manifest = manifest / "manifest.csv" if manifest.is_dir() else manifest
    from micromets.phantom.build import read_phantom_manifest

    truths = read_truths(manifest)
    rows = {r["name"]: r for r in read_phantom_manifest(manifest)}
    roles_file = manifest.parent / "speed_roles.json"
    roles = json.loads(roles_file.read_text()) if roles_file.is_file() else {}
    if not roles:  # a user's set: time its smallest and largest slides
        by_size = sorted(rows, key=lambda n: int(rows[n]["l0_width"]) * int(rows[n]["l0_height"]))
        roles = {by_size[0]: "small"} | ({by_size[-1]: "large"} if len(by_size) > 1 else {})
    from micromets.model import Detector

    detector = Detector.load(model_dir)
    card = detector.card
    report = {
        "schema": "micromets.bench/1", "date": started.isoformat(timespec="seconds"),
        "micromets": __version__, "machine": {"cpus": os.cpu_count(), "cpu_model": cpu_model(),
                                              "platform": platform.platform(), "python": platform.python_version()},
        "model": {"name": card.get("name"), "version": card.get("version"), "input_mpp": card.get("input_mpp"),
                  "patch_px": card.get("patch_px"), "training_data": card.get("training_data"),
                  "split": card.get("split"), "phantom_stroma_and_fat": stroma_and_fat_seen(card)},
        "phantoms": {"manifest": str(manifest.resolve()), "n_slides": len(truths),
                     "tile_sources": _tile_sources(manifest.parent, rows.values())},
        "modes": {}, "speed": [], "baseline": [], "skipped_modes": {},
    }
    runs_dir = work_dir / "runs" / started.strftime("%Y%m%dT%H%M%S")
    for mode in modes:
        results = []
        for truth in truths:
            slide_path = rows[truth.name]["slide_path"]
            try:
                run = _in_fresh_process("analyze", slide_path, str(runs_dir / mode), mode,
                                        str(model_dir) if model_dir else None)
            except MicrometsError as err:
                if "mode" in str(err) and not results:
                    report["skipped_modes"][mode] = str(err)
                    break
                raise
            results.append(run["result"])
            log(f"bench: {mode} {truth.name}: {run['result']['node_class']} (truth {truth.node_class}), "
                f"{run['wall_s']:.1f} s, peak {run['peak_rss_mb']:.0f} MB")
            if truth.name in roles:
                report["speed"].append(_speed_row(truth.name, roles[truth.name], mode, run))
        if len(results) == len(truths):
            report["modes"][mode] = score(truths, results)
    if baseline:
        for name, role in roles.items():
            base = _in_fresh_process("baseline", rows[name]["slide_path"], str(model_dir) if model_dir else None)
            piped = next((s for s in report["speed"] if s["slide"] == name and s["mode"] == "thorough"), None)
            threshold = float(card.get("threshold", 0.5))
            heat = np.load(runs_dir / "thorough" / name / "heatmap.npy") if piped else None
            same_shape = heat is not None and heat.shape == base["h_prob"].shape
            report["baseline"].append({
                "slide": name, "size": role, "seconds": round(base["wall_s"], 3),
                "seconds_per_cm2": round(base["wall_s"] / (base["tissue_area_mm2"] / 100.0), 2),
                "n_patches": base["n_patches"], "patches_per_s": round(base["n_patches"] / base["wall_s"], 1),
                "read_share": round(base["read_s"] / base["wall_s"], 3),
                "inference_share": round(base["inference_s"] / base["wall_s"], 3),
                "peak_rss_mb": round(base["peak_rss_mb"], 1),
                "speedup_of_thorough": (round(base["wall_s"] / piped["seconds_before_post"], 2)
                                        if piped and piped["seconds_before_post"] else None),
                "heatmap_max_abs_diff": (float(np.abs(heat - base["h_prob"]).max()) if same_shape else None),
                "heatmap_mean_abs_diff": (float(np.abs(heat - base["h_prob"]).mean()) if same_shape else None),
                "cells_on_other_side_of_threshold": (
                    int(((heat > threshold) != (base["h_prob"] > threshold)).sum()) if same_shape else None),
            })
            log(f"bench: baseline {name}: {base['wall_s']:.1f} s for {base['n_patches']} patches")
    report["elapsed_s"] = round((_dt.datetime.now(_dt.timezone.utc) - started).total_seconds(), 1)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = started.strftime("%Y-%m-%dT%H%M%SZ")
    (out_dir / f"{stem}.json").write_text(json.dumps(report, indent=1))
    (out_dir / f"{stem}.md").write_text(markdown(report))
    report["files"] = [str(out_dir / f"{stem}.json"), str(out_dir / f"{stem}.md")]
    return report


# ----------------------------------------------------------------------------------------------- table


def _fmt(value, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


#: where the bundled capsule / trabecula / island stroma and the fat tiles come from (src/micromets/data/tiles)
PHANTOM_STROMA_AND_FAT = ("crc_tiles/kather2016/02_STROMA", "crc_tiles/kather2016/07_ADIPOSE")


def stroma_and_fat_seen(card: dict) -> str:
    """Whether the model under test trained on the phantoms' stroma and fat tiles, from its card: unseen only when
    the card's ``held_back`` lists both folders; seen when a ``training_data`` path holds them."""
    held_back = set(card.get("held_back") or [])
    if set(PHANTOM_STROMA_AND_FAT) <= held_back:
        return "unseen (the model card's held_back lists them)"
    paths = [d.get("path", "") for d in card.get("training_data") or [] if isinstance(d, dict)]
    seen = [p for p in paths if any(t == p or t.startswith(p.rstrip("/") + "/") for t in PHANTOM_STROMA_AND_FAT)]
    if seen:
        return (f"SEEN: the model trained on {', '.join(seen)}, which holds them; its stroma numbers here are "
                "not from unseen tissue")
    return "not in the model card's training data"


def markdown(report: dict) -> str:
    """The bench report as markdown tables (accuracy per mode, speed, baseline)."""
    lines = [f"# micromets bench {report['date']}", "",
             f"micromets {report['micromets']}, model {report['model']['name']} {report['model']['version']} "
             f"({report['model']['input_mpp']} µm/px, {report['model']['patch_px']} px patches), "
             f"{report['machine']['cpus']} CPUs ({report['machine'].get('cpu_model', 'unknown')}), "
             f"{report['phantoms']['n_slides']} phantom slides, {report['elapsed_s']} s in all.", ""]
    for folder, slides in report["phantoms"].get("tile_sources", {}).items():
        lines.append(f"- phantom tiles `{Path(folder).name}/` from: {', '.join(slides)}")
    for item in report["model"].get("training_data") or []:
        lines.append(f"- model trained on: {item.get('name', item) if isinstance(item, dict) else item}")
    if report["model"].get("phantom_stroma_and_fat"):
        lines.append(f"- phantom stroma and fat (Kather 2016 STROMA / ADIPOSE tiles): "
                     f"{report['model']['phantom_stroma_and_fat']}")
    lines.append("")
    if report["modes"]:
        lines += ["## Accuracy", "",
                  "| mode | FROC | slide AUC | kappa (pN) | node acc. | sens. ITC @1FP | sens. micro @1FP | "
                  "sens. macro @1FP | diam. err. micro (mm) | diam. err. macro (mm) | FP lesions (candidates) |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for mode, acc in report["modes"].items():
            sens = acc["sensitivity_at_1fp_per_slide"]
            diam = acc["diameter_error"]
            lines.append(
                f"| {mode} | {_fmt(acc.get('froc'))} | {_fmt(acc.get('slide_auc'))} | {_fmt(acc['kappa'])} | "
                f"{_fmt(acc['node_accuracy'])} | {_fmt(sens['itc']['sensitivity'])} | "
                f"{_fmt(sens['micro']['sensitivity'])} | {_fmt(sens['macro']['sensitivity'])} | "
                f"{_fmt(diam['micro']['mean_error_mm'])} ± {_fmt(diam['micro']['mean_abs_error_mm'])} | "
                f"{_fmt(diam['macro']['mean_error_mm'])} ± {_fmt(diam['macro']['mean_abs_error_mm'])} | "
                f"{acc['n_false_positive_lesions']} ({acc['n_false_positives']}) |")
        lines += ["", "Diameter error: mean signed ± mean absolute (detected − true maximum Feret diameter). FP "
                  "lesions: counted lesions that hit no true lesion; candidates: also the unconfirmed ones. FROC and "
                  "sensitivities rank every candidate by its confirmed probability.", ""]
        for mode, acc in report["modes"].items():
            conf = acc["node_confusion"]
            lines += [f"Node classes, {mode} (rows truth, columns pipeline):", "",
                      "| truth \\ pipeline | " + " | ".join(conf["labels"]) + " |",
                      "|---" * (len(conf["labels"]) + 1) + "|"]
            lines += [f"| {label} | " + " | ".join(str(v) for v in row) + " |"
                      for label, row in zip(conf["labels"], conf["rows_truth_cols_predicted"])]
            lines.append("")
            negatives = [row for row in acc.get("per_slide", []) if row["truth"] == "negative"]
            if negatives:
                lines += [f"Negative nodes, {mode}: false-positive lesions (and all false candidates) per node:", "",
                          "| node | pipeline | FP lesions | FP candidates |", "|---|---|---|---|"]
                lines += [f"| {row['name']} | {row['predicted']} | {row['false_positive_lesions']} | "
                          f"{row['false_positive_candidates']} |" for row in negatives]
                called = sum(row["predicted"] != "negative" for row in negatives)
                lines += ["", f"{called} of {len(negatives)} negative nodes called positive.", ""]
    if report["skipped_modes"]:
        lines += [f"Skipped modes: {', '.join(f'{m} ({why})' for m, why in report['skipped_modes'].items())}", ""]
    if report["speed"]:
        lines += ["## Speed and memory", "",
                  "| slide | size | mode | px | tissue mm² | s | s/cm² | patches | patches/s | read | inference | "
                  "post | peak RSS MB |", "|---" * 13 + "|"]
        for s in report["speed"]:
            lines.append(f"| {s['slide']} | {s['size']} | {s['mode']} | {s['l0_width']}×{s['l0_height']} | "
                         f"{_fmt(s['tissue_area_mm2'], 2)} | {_fmt(s['seconds'], 1)} | {_fmt(s['seconds_per_cm2'], 1)} | "
                         f"{s['n_patches']} | {_fmt(s['patches_per_s'], 1)} | {_fmt(s['read_share'], 2)} | "
                         f"{_fmt(s['inference_share'], 2)} | {_fmt(s['post_share'], 2)} | {_fmt(s['peak_rss_mb'], 0)} |")
        lines.append("")
    if report["baseline"]:
        lines += ["## Baseline (level-0 read per patch, batch 1, no prefetch) on the same slides", "",
                  "| slide | size | s | s/cm² | patches/s | read | inference | peak RSS MB | speed-up of thorough "
                  "(before post-processing) | heatmap abs diff mean / max | cells flipped at threshold |",
                  "|---" * 11 + "|"]
        for b in report["baseline"]:
            lines.append(f"| {b['slide']} | {b['size']} | {_fmt(b['seconds'], 1)} | {_fmt(b['seconds_per_cm2'], 1)} | "
                         f"{_fmt(b['patches_per_s'], 1)} | {_fmt(b['read_share'], 2)} | "
                         f"{_fmt(b['inference_share'], 2)} | {_fmt(b['peak_rss_mb'], 0)} | "
                         f"{_fmt(b['speedup_of_thorough'], 2)}× | {_fmt(b['heatmap_mean_abs_diff'])} / "
                         f"{_fmt(b['heatmap_max_abs_diff'])} | {_fmt(b['cells_on_other_side_of_threshold'])} |")
        lines.append("")
    return "\n".join(lines)
