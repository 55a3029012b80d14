"""IHC analysis speed: cm² of tissue per 10 s on this machine (target >= 1 cm² per 10 s at 1 µm/px, 2 cores).

    PYTHONPATH=src .venv/bin/python bench/ihc_speed.py [--size-mm 8] [--mpp 1.0] [--workers 2]

Builds (once, cached in bench/work/ihc-speed/) a square synthetic cytokeratin IHC slide (micromets.phantom.ihc:
ITC clusters, micrometastases, pigment decoys) at `--mpp` µm/px, then times the IHC branch of the pipeline on it
(tissue mask + micromets.ihc.analyze_ihc: deconvolution, DAB map, cells, clusters) and reports wall and CPU seconds,
cm² of tissue per 10 s, CPU seconds per cm² (less sensitive than wall time to other jobs on a shared machine; the
1-minute load average at the start is recorded too), peak RSS, and whether every true cluster was found. Writes
bench/results/ihc-speed-<UTC time>.json.
"""

import argparse
import json
import os
import resource
import time
from pathlib import Path

from micromets.ihc import analyze_ihc
from micromets.phantom.ihc import make_ihc_phantom, score_ihc, write_ihc_phantom
from micromets.slide import open_slide
from micromets.tissue import tissue_mask

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mm", type=float, default=8.0, help="side of the square phantom, mm")
    parser.add_argument("--mpp", type=float, default=1.0, help="level-0 µm/px of the phantom")
    parser.add_argument("--workers", type=int, default=2, help="windows analysed at a time (threads)")
    args = parser.parse_args()
    work = HERE / "work" / "ihc-speed"
    work.mkdir(parents=True, exist_ok=True)
    path = work / f"ihc-{args.size_mm:g}mm-{args.mpp:g}mpp.tiff"
    phantom = make_ihc_phantom(seed=7, size_mm=(args.size_mm, args.size_mm), l0_mpp=args.mpp,
                               itc_sizes=(5, 12, 30, 60, 100, 150) * 2, micro_sizes=(400, 1000),
                               n_haemosiderin=8, n_anthracotic=8)
    truth = phantom.truth()
    if not path.exists():
        write_ihc_phantom(path, phantom)
    load_1min = os.getloadavg()[0]
    wall0, cpu0 = time.perf_counter(), time.process_time()
    with open_slide(path) as slide:
        tissue = tissue_mask(slide)
        found = analyze_ihc(slide, tissue, workers=args.workers)
        l0_mpp = slide.l0_mpp
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    scores = score_ihc(truth, found.clusters, found.cells_l0, l0_mpp)
    tissue_cm2 = tissue.area_mm2 / 100
    report = {
        "slide": str(path), "size_mm": args.size_mm, "l0_mpp": args.mpp, "workers": args.workers, "tissue_cm2": round(tissue_cm2, 4),
        "wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "cm2_per_10s": round(10 * tissue_cm2 / wall, 3),
        "cpu_s_per_cm2": round(cpu / tissue_cm2, 2), "load_1min_at_start": round(load_1min, 2),
        "timing_s": found.timing_s,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "target_cm2_per_10s": 1.0, "scores": scores,
    }
    out = HERE / "results" / f"ihc-speed-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json"
    out.write_text(json.dumps(report, indent=1, default=float))
    print(json.dumps({k: v for k, v in report.items() if k != "scores"}, indent=1))
    print(f"written {out}")


if __name__ == "__main__":
    main()
