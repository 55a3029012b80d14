"""Held-out protocol of the tissue-class detector (issue 14): whole sources held out, per source, over seeds.

    PYTHONPATH=src .venv/bin/python bench/tissue_heldout.py --seeds 0,1 --steps 1200 [--data-root ../shared/data]
        [--folds fold1]   # one fold only: its sources' numbers, a third of the time

Writes bench/results/tissue-heldout-<UTC>.json (per seed and mean ± sd) and prints the markdown table.

    PYTHONPATH=src .venv/bin/python bench/tissue_heldout.py --model src/micromets/models/cnn-ln

scores one exported model on the same windows of every source, without training (a shipped model is held out
only from the sources its card does not list), and writes bench/results/tissue-fixed-<UTC>.json.
"""

import argparse
import datetime as dt
import json
import sys
import time
from pathlib import Path

import torch

from micromets.train import tissue_data, tissue_fit


def markdown(report: dict) -> str:
    lines = ["| source | held out as | number | mean ± sd over seeds | per seed |", "|---|---|---|---|---|"]
    for source, keys in report["summary"].items():
        for key, v in keys.items():
            sd = f" ± {v['sd']:.3f}" if v["sd"] is not None else ""
            lines.append(f"| {source} | {report['per_seed'][str(report['seeds'][0])][source]['kind']} | {key} | "
                         f"{v['mean']:.3f}{sd} | {', '.join(f'{x:.3f}' for x in v['per_seed'])} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-root", default="../shared/data")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--steps", type=int, default=1200)
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--folds", help="comma-separated folds of tissue_data.FOLDS (default: all three)")
    ap.add_argument("--model", help="score this exported model directory instead of training")
    args = ap.parse_args()
    unknown = sorted(set(args.folds.split(",")) - set(tissue_data.FOLDS)) if args.folds else []
    if unknown:
        ap.error(f"--folds: no fold {', '.join(unknown)} (folds: {', '.join(tissue_data.FOLDS)})")
    torch.set_num_threads(2)
    t0 = time.perf_counter()
    ts = tissue_data.build(args.data_root)
    stamp = f"{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%SZ}"
    if args.model:
        from micromets.model import Detector

        report = tissue_fit.fixed_model_report(Detector.load(args.model), ts)
        report["wall_s"] = round(time.perf_counter() - t0, 1)
        out = Path(__file__).parent / "results" / f"tissue-fixed-{stamp}.json"
        out.write_text(json.dumps(report, indent=1) + "\n")
        print(f"{report['model']} (trained on {', '.join(report['trained_on'])})")
        for source, row in report["table"].items():
            print(f"| {source} | {row['kind']} | " + " | ".join(f"{k} {v}" for k, v in row.items()
                                                             if k not in ("kind",)) + " |")
        print(f"\nwrote {out}")
        return
    report = tissue_fit.held_out_report(ts, [int(s) for s in args.seeds.split(",")], args.steps, width=args.width,
                                        folds=args.folds.split(",") if args.folds else None,
                                        log=lambda m: print(m, file=sys.stderr, flush=True))
    report["wall_s"] = round(time.perf_counter() - t0, 1)
    out = Path(__file__).parent / "results" / f"tissue-heldout-{stamp}.json"
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(markdown(report))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
