"""Detector speed (issue 8): patches/s of each shipped model, and seconds per cm² of tissue end to end for
``--mode thorough`` and ``--mode fast`` on large generated pyramidal TIFFs, with CPU seconds and peak RSS.

    PYTHONPATH=src .venv/bin/python bench/detector_speed.py [--sizes 0.75,1.5] [--modes thorough,fast]
                                                              [--skip-models] [--skip-slides] [--model DIR]

Slides (built once, cached in bench/work/detector-speed/; 15 and 30 min on a busy 2-core machine): a square
0.25 µm/px pyramidal JPEG TIFF (OpenSlide "generic tiled TIFF") of side ≥ 40,000 px holding one round phantom lymph
node of the given area (cm²) on glass, textured from the bundled CAMELYON16 tiles (micromets.phantom), with one
micrometastasis (1.0 mm) and one ITC (0.15 mm) at known places. s/cm² is reported per cm² of the drawn node and per
cm² of the tissue the pipeline measures (result.json ``tissue_area_mm2``).

Model speed: the model alone in onnxruntime (``Detector._run`` on pre-normalised patches: pixel scaling +
session) and the whole ``Detector.predict`` (tissue filter + stain look-up + model), for batch sizes 32–256 and
1–2 intra-op threads, on real patches read from the slide.

End to end: one fresh process per (slide, mode) runs ``analyze_slide`` (tissue mask, stain, heatmap, lesions,
outputs); wall seconds, CPU seconds (user + system of that process) and peak RSS (``ru_maxrss``) are recorded,
with the pipeline's own split (read wait, inference, post) and whether each true lesion was hit.

``--model DIR`` times another fine model (e.g. the INT8 candidate of bench/quantise.py) instead of the shipped
default, in the stage profile and end to end.

Writes bench/results/detector-speed-<UTC time>.json and prints a summary. The machine is shared: compare CPU
seconds as well as wall seconds.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
WORK = HERE / "work" / "detector-speed"
L0_MPP = 0.25
MIN_SIDE_PX = 40_000
LESIONS = (("micro", 1.0, (0.35, 0.0)), ("itc", 0.15, (-0.4, 0.25)))  # class, diameter mm, offset / radius


def speed_slide(tissue_cm2: float, seed: int = 8) -> tuple[Path, list[dict]]:
    """Build (or reuse) the speed slide with ``tissue_cm2`` of node tissue; returns its path and true lesions."""
    import shapely
    from shapely.geometry import Point

    from micromets.bench import BUNDLED_TILES, BUNDLED_TILES_MPP
    from micromets.phantom.layout import CAPSULE_UM, Layout, Lesion, lesion_outline
    from micromets.phantom.pyramid import write_pyramid
    from micromets.phantom.render import PhantomRenderer
    from micromets.phantom.build import CAPSULE_TILES, CAPSULE_TILES_MPP
    from micromets.phantom.texture import load_tiles, restain

    radius_px = math.sqrt(tissue_cm2 / math.pi) * 1e4 / L0_MPP
    side = max(MIN_SIDE_PX, int(math.ceil((2 * radius_px + 4000) / 256)) * 256)
    centre = (side / 2, side / 2)
    node = Point(centre).buffer(radius_px, quad_segs=64)
    rng = np.random.default_rng(seed)
    lesions = []
    for i, (size_class, diameter_mm, (dx, dy)) in enumerate(LESIONS, start=1):
        outline = lesion_outline("blob", diameter_mm * 1000 / L0_MPP, rng)
        outline = shapely.affinity.translate(outline, centre[0] + dx * radius_px, centre[1] + dy * radius_px)
        lesions.append(Lesion(i, size_class, diameter_mm, "blob", outline))
    truth = [{"class": les.size_class, "diameter_mm": les.diameter_mm,
              "l0_centre": list(les.outline_l0.centroid.coords[0])} for les in lesions]
    path = WORK / f"speed-{tissue_cm2:g}cm2-seed{seed}.tiff"
    if not path.exists():
        WORK.mkdir(parents=True, exist_ok=True)
        layout = Layout(side, side, L0_MPP, node, node.buffer(-CAPSULE_UM / L0_MPP), shapely.Polygon(), tuple(lesions))
        normal = load_tiles(BUNDLED_TILES / "normal", BUNDLED_TILES_MPP, L0_MPP)
        capsule = restain(load_tiles(CAPSULE_TILES, CAPSULE_TILES_MPP, L0_MPP), like=normal)
        renderer = PhantomRenderer(layout, normal, load_tiles(BUNDLED_TILES / "tumor", BUNDLED_TILES_MPP, L0_MPP),
                                   capsule, seed)
        start = time.perf_counter()
        tmp = path.with_suffix(".part")
        write_pyramid(tmp, side, side, L0_MPP, renderer.render_region,
                      description=f"micromets detector-speed slide {tissue_cm2} cm2 seed={seed}")
        os.replace(tmp, path)
        print(f"built {path.name}: {side} x {side} px in {time.perf_counter() - start:.0f} s", flush=True)
    return path, truth


def _vm_hwm_mb() -> float:
    """Peak resident memory of this process (Linux VmHWM, else ru_maxrss), MB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _real_patches(detector, slide_path: Path, n: int) -> np.ndarray:
    """``n`` tissue patches of the slide at the detector's resolution (a stain reference is set from them)."""
    from micromets.analyze import stain_sample
    from micromets.slide import open_slide
    from micromets.tiles import blocks_with_tissue, read_block, tile_grid
    from micromets.tissue import tissue_mask

    with open_slide(slide_path) as slide:
        tissue = tissue_mask(slide)
        detector.set_stain_reference(stain_sample(slide, tissue, detector.input_mpp, detector.patch_px))
        grid = tile_grid(slide, tissue, detector.cell_um)
        out, have = [], 0
        for h_r0, h_c0 in blocks_with_tissue(grid, 8)[::7]:
            block = read_block(slide, grid, h_r0, h_c0, 8, detector.patch_px, detector.input_mpp)
            out.append(block.patches)
            have += len(block.patches)
            if have >= n:
                break
    patches = np.concatenate(out)
    return np.concatenate([patches] * math.ceil(n / len(patches)))[:n]


def model_speed(slide_path: Path, n: int = 2048, model_dir: Path | None = None) -> list[dict]:
    """Patches/s (wall and per CPU second) of each shipped model: network alone and whole ``predict``."""
    from micromets.model import Detector, coarse_model_dir, default_model_dir

    rows = []
    for folder in (model_dir or default_model_dir(), coarse_model_dir()):
        for threads in (1, 2):
            det = Detector.load(folder, threads=threads)
            patches = _real_patches(det, slide_path, n)
            x = det._input(patches)
            base = det.batch_size
            for batch in sorted({base // 2, base, 2 * base}):
                det.batch_size = batch
                for what, fn in (("network", lambda: _network_only(det, x, batch)),
                                 ("predict", lambda: det.predict(patches))):
                    fn()  # warm-up
                    wall0, cpu0 = time.perf_counter(), time.process_time()
                    fn()
                    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
                    rows.append({"model": det.name, "version": det.version, "patch_px": det.patch_px,
                                 "input_mpp": det.input_mpp, "threads": threads, "batch_per_thread": batch,
                                 "what": what, "n": n, "patches_per_s": round(n / wall, 1),
                                 "patches_per_cpu_s": round(n / cpu, 1)})
                    print(f"{det.name} threads {threads} batch {batch} {what}: {n / wall:.0f} patches/s "
                          f"({n / cpu:.0f} per CPU s)", flush=True)
    return rows


def _network_only(det, x: np.ndarray, batch: int) -> None:
    """The ONNX session alone on prepared input, ``batch`` per run, ``det.threads`` runs at a time."""
    chunks = [x[i:i + batch] for i in range(0, len(x), batch)]
    run = lambda c: det._session.run(None, {det._input_name: c})  # noqa: E731
    if det.threads == 1:
        for c in chunks:
            run(c)
    else:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(det.threads) as pool:
            list(pool.map(run, chunks))


def profile_stages(slide_path: Path, n_blocks: int = 60, model_dir: Path | None = None) -> dict:
    """CPU milliseconds per fine-model patch of each thorough-mode stage, run one after the other in one thread on
    ``n_blocks`` random 16 × 16-cell blocks: read (JPEG tile decode, see micromets.slide), resample to the model's
    µm/px, tissue filter, stain normalisation (per-slide look-up table), pixel scaling to NCHW float32, network."""
    from PIL import Image

    from micromets import normalise
    from micromets.analyze import stain_sample
    from micromets.model import Detector
    from micromets.slide import open_slide
    from micromets.tiles import blocks_with_tissue, tile_grid
    from micromets.tissue import tissue_mask

    det = Detector.load(model_dir, threads=1)
    cpu: dict[str, float] = {}

    def timed(name, fn, *a):
        start = time.process_time()
        out = fn(*a)
        cpu[name] = cpu.get(name, 0.0) + time.process_time() - start
        return out

    with open_slide(slide_path) as slide:
        tissue = timed("tissue mask (once per slide)", tissue_mask, slide)
        sample = timed("stain sample + estimate (once per slide)", stain_sample, slide, tissue, det.input_mpp,
                       det.patch_px)
        timed("stain sample + estimate (once per slide)", det.set_stain_reference, sample)
        grid = tile_grid(slide, tissue, det.cell_um)
        starts = blocks_with_tissue(grid, 16)
        level = slide.level_for_mpp(det.input_mpp)
        down = slide.level_downsamples[level]
        n = 0
        for i in np.random.default_rng(0).permutation(len(starts))[:n_blocks]:
            h_r0, h_c0 = starts[i]
            n_r, n_c = min(16, grid.shape[0] - h_r0), min(16, grid.shape[1] - h_c0)
            l0_x, l0_y = round(h_c0 * grid.l0_cell), round(h_r0 * grid.l0_cell)
            l_w, l_h = math.ceil(n_c * grid.l0_cell / down), math.ceil(n_r * grid.l0_cell / down)
            out_w, out_h = n_c * det.patch_px, n_r * det.patch_px
            if (l_w, l_h) == (out_w, out_h):
                img = timed("read (tile decode + RGB)", slide.read_region, l0_x, l0_y, level, l_w, l_h)
            else:
                image = timed("read (tile decode + RGB)", slide._read_image, l0_x, l0_y, level, l_w, l_h)
                image = timed("resample to the model's µm/px", image.resize, (out_w, out_h), Image.Resampling.BOX)
                img = timed("read (tile decode + RGB)", np.array, image)
            cells = img.reshape(n_r, det.patch_px, n_c, det.patch_px, 3).swapaxes(1, 2)
            local = np.argwhere(grid.h_tissue[h_r0:h_r0 + n_r, h_c0:h_c0 + n_c])
            patches = timed("cut into patches", np.ascontiguousarray, cells[local[:, 0], local[:, 1]])
            n += len(patches)
            timed("tissue filter", normalise.tissue_fraction, patches, det._tissue_beta)
            rgb = timed("stain normalisation (LUT)", det.normalise, patches)
            det._stain_method, kept = "none", det._stain_method  # scaling alone
            x = timed("scaling to NCHW float32", det._input, rgb)
            det._stain_method = kept
            timed("onnxruntime network (1 thread)", det._session.run, None, {det._input_name: x})
    per_patch = {k: round(1e3 * v / n, 4) for k, v in cpu.items()}
    print(f"profile ({n} patches, {slide_path.name}): " + ", ".join(f"{k} {v} ms" for k, v in per_patch.items()),
          flush=True)
    return {"slide": slide_path.name, "model": f"{det.name} {det.version} ({det.model_dir})", "n_patches": n,
            "cpu_ms_per_patch": per_patch,
            "patches_per_cm2_nominal": round(1e8 / det.cell_um ** 2)}


def _child(slide: str, mode: str, out_dir: str, result_file: str, model_dir: str | None = None) -> None:
    """One end-to-end run in this (fresh) process; writes timing, CPU seconds, peak RSS and the result."""
    from micromets.analyze import analyze_slide
    from micromets.model import Detector

    wall0, cpu0 = time.perf_counter(), time.process_time()
    result = analyze_slide(slide, out_dir, mode=mode, detector=Detector.load(model_dir))
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    Path(result_file).write_text(json.dumps({"wall_s": wall, "cpu_s": cpu, "peak_rss_mb": _vm_hwm_mb(),
                                             "result": result}))


def end_to_end(slide_path: Path, truth: list[dict], mode: str, node_cm2: float, model_dir: Path | None = None) -> dict:
    """Run the pipeline on one slide in a fresh process; s/cm² (of the measured tissue and of the drawn node,
    ``node_cm2``), CPU s/cm², peak RSS, lesions hit."""
    import shapely
    import subprocess
    import sys

    run_dir = WORK / "runs" / mode
    result_file = run_dir / f"{slide_path.stem}.json"
    run_dir.mkdir(parents=True, exist_ok=True)
    paths = [str(HERE.parent / "src"), os.environ.get("PYTHONPATH")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, paths))}
    code = (f"import sys; sys.path.insert(0, {str(HERE)!r}); from detector_speed import _child; "
            f"_child({str(slide_path)!r}, {mode!r}, {str(run_dir)!r}, {str(result_file)!r}, "
            f"{str(model_dir) if model_dir else None!r})")
    subprocess.run([sys.executable, "-c", code], env=env, check=True)
    run = json.loads(result_file.read_text())
    result = run["result"]
    tissue_cm2 = result["tissue_area_mm2"] / 100
    mpp = result["l0_mpp"]
    hits = []
    for les in truth:
        centre = shapely.Point(les["l0_centre"])
        found = [r for r in result["lesions"] if any(
            shapely.Polygon(ring).distance(centre) * mpp <= 1000 * les["diameter_mm"] / 2 for ring in r["l0_outline"])]
        hits.append({**les, "found": bool(found), "found_class": found[0]["class"] if found else None,
                     "found_diameter_mm": found[0]["diameter_mm"] if found else None})
    timing = result["timing_s"]
    row = {"slide": slide_path.name, "mode": mode, "model": result["model"],
           "l0_size_px": [result["l0_width"], result["l0_height"]],
           "tissue_cm2": round(tissue_cm2, 4), "node_cm2": node_cm2, "wall_s": round(run["wall_s"], 2),
           "cpu_s": round(run["cpu_s"], 2), "cpu_s_per_node_cm2": round(run["cpu_s"] / node_cm2, 2),
           "s_per_cm2": round(run["wall_s"] / tissue_cm2, 2), "cpu_s_per_cm2": round(run["cpu_s"] / tissue_cm2, 2),
           "peak_rss_mb": round(run["peak_rss_mb"], 1), "timing_s": timing,
           "node_class": result["node_class"], "n_lesions": result["n_lesions"], "true_lesions": hits}
    print(f"{mode} {slide_path.name}: {row['wall_s']} s wall, {row['cpu_s']} CPU s, {tissue_cm2:.3f} cm² → "
          f"{row['s_per_cm2']} s/cm² ({row['cpu_s_per_cm2']} CPU s/cm²), peak RSS {row['peak_rss_mb']} MB, "
          f"{result['node_class']}, lesions hit {[h['found'] for h in hits]}", flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="0.75,1.5", help="tissue areas of the speed slides, cm²")
    parser.add_argument("--modes", default="thorough,fast", help="detector modes to time")
    parser.add_argument("--skip-models", action="store_true", help="do not time the models alone")
    parser.add_argument("--skip-slides", action="store_true", help="do not run the pipeline end to end")
    parser.add_argument("--model", type=Path, default=None,
                        help="fine model folder to time (default: the shipped src/micromets/models/default)")
    args = parser.parse_args()
    sizes = [float(a) for a in args.sizes.split(",")]
    slides = [speed_slide(a) for a in sizes]
    from micromets.bench import cpu_model

    report = {"date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "machine": platform.platform(),
              "cpu_model": cpu_model(), "cpus": os.cpu_count(), "load_avg_start": os.getloadavg(),
              "targets": {"thorough_s_per_cm2": 20, "fast_s_for_1_5_cm2": 10, "peak_rss_mb": 1024}}
    if not args.skip_models:
        report["profile_thorough"] = profile_stages(slides[0][0], model_dir=args.model)
        report["models"] = model_speed(slides[0][0], model_dir=args.model)
    if not args.skip_slides:
        report["end_to_end"] = [end_to_end(path, truth, mode, size, args.model) for mode in args.modes.split(",")
                                for (path, truth), size in zip(slides, sizes)]
    report["load_avg_end"] = os.getloadavg()
    out = HERE / "results" / f"detector-speed-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json"
    out.write_text(json.dumps(report, indent=1))
    print(f"written {out}")


if __name__ == "__main__":
    main()
