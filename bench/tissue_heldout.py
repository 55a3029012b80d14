"""Held-out protocol of the tissue-class detector (issue 14): whole sources held out, per source, over seeds.

    PYTHONPATH=src .venv/bin/python bench/tissue_heldout.py --seeds 0,1 --steps 1200 [--data-root ../shared/data]
        [--folds fold1]   # one fold only: its sources' numbers, a third of the time
        [--mpp 0.75]      # another field of view: 96 px at this µm/px (docs/model.md, "Field of view")
        [--save-models DIR]  # also export every fold × seed model as DIR/<fold>-s<seed> (card: held_out_groups)
        [--mil add|only]  # multiple-instance bags of the weak carcinoma tiles, beside or instead of the nuclear
                          # window selection (tissue_fit, "Multiple-instance bags"; docs/model.md)

Writes bench/results/tissue-heldout-<UTC>.json (per seed and mean ± sd) and prints the markdown table.

    PYTHONPATH=src .venv/bin/python bench/tissue_heldout.py --model src/micromets/models/cnn-ln

scores one exported model on the same windows of every source, without training (a shipped model is held out
only from the sources its card does not list; an --export-fold model from its fold's groups: --held-out-only
scores only those), and its verifier (the seed ensemble) when its card has one, and writes
bench/results/tissue-fixed-<UTC>.json. A model with a context model gets each window min(own, context of the field
around it): a lower bound of its heatmap, which keeps a region the context model calls anywhere
(tissue_fit.with_context).

    PYTHONPATH=src .venv/bin/python bench/tissue_heldout.py --export-fold fold1 --out bench/work/models/fold1
        [--seed 0 --steps 1200]

trains one model of the same recipe without the fold's groups (tissue_fit.export_tissue_model with ``fold``) and
exports it (ONNX + model.json naming them in ``held_out_groups``): fold1 never sees BACH A03, the model for
bench/breast_normal_slide.py.
"""

import argparse
import datetime as dt
import json
import sys
import time
from pathlib import Path

import torch

from micromets.cli.validate import writable_folder
from micromets.errors import MicrometsError
from micromets.train import tissue_data, tissue_fit
from micromets.train.augment import parse_stain


INPUT_MPP = 0.5  # the shipped field: 96 px at 0.5 µm/px (tissue_data.build's default)

def markdown(report: dict) -> str:
    lines = ["| source | held out as | number | mean ± sd over seeds | per seed |", "|---|---|---|---|---|"]
    for source, keys in report["summary"].items():
        for key, v in keys.items():
            sd = f" ± {v['sd']:.3f}" if v["sd"] is not None else ""
            lines.append(f"| {source} | {report['per_seed'][str(report['seeds'][0])][source]['kind']} | {key} | "
                         f"{v['mean']:.3f}{sd} | {', '.join(f'{x:.3f}' for x in v['per_seed'])} |")
    return "\n".join(lines)


def check_args(args) -> None:
    """Refuse unknown folds and an unwritable --out before any data is read (MicrometsError, one line)."""
    named = (args.folds.split(",") if args.folds else []) + ([args.export_fold] if args.export_fold else [])
    unknown = sorted(set(named) - set(tissue_data.FOLDS))
    if unknown:
        raise MicrometsError(f"no fold {', '.join(unknown)} (folds: {', '.join(tissue_data.FOLDS)})")
    if args.mpp <= 0:
        raise MicrometsError(f"--mpp must be > 0 µm/px, got {args.mpp}")
    if args.mpp != INPUT_MPP and args.model:
        raise MicrometsError("--mpp is not for --model (a given model has its own)")
    if args.held_out_only and not args.model:
        raise MicrometsError("--held-out-only is for --model (a fold's model, whose card names its held-out groups)")
    try:
        args.stain = parse_stain(args.stain_jitter)
    except ValueError as err:
        raise MicrometsError(f"--stain-jitter {args.stain_jitter!r}: {err}") from None
    for flag, given in (("--mil", args.mil), ("--save-models", args.save_models)):
        if given is not None and (args.model or args.export_fold):
            raise MicrometsError(f"{flag} is for the held-out runs (not with --model or --export-fold)")
    if args.save_models is not None:
        writable_folder(args.save_models, f"--save-models {args.save_models}")
    if args.export_fold:
        if args.model or args.folds:
            raise MicrometsError("--export-fold trains one model: not with --model or --folds")
        if args.out is None:
            raise MicrometsError("--export-fold needs --out (the model folder to write)")
        writable_folder(args.out, f"--out {args.out}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-root", default="../shared/data")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--steps", type=int, default=1200)
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--folds", help="comma-separated folds of tissue_data.FOLDS (default: all three)")
    ap.add_argument("--model", help="score this exported model directory instead of training")
    ap.add_argument("--export-fold", help="train one model without this fold's groups and export it to --out")
    ap.add_argument("--out", type=Path, help="--export-fold: the model folder to write")
    ap.add_argument("--seed", type=int, default=0, help="--export-fold: the training seed")
    ap.add_argument("--held-out-only", action="store_true",
                    help="--model: score only the groups its card names in held_out_groups (a fold's model)")
    ap.add_argument("--save-models", type=Path,
                    help="held-out runs: export every fold × seed model here as <fold>-s<seed>")
    ap.add_argument("--stain-jitter", default=",".join(map(str, tissue_fit.TISSUE_STAIN_JITTER)),
                    help="SIGMA,VECTOR_SIGMA[,CAST] of the recipe's stain augmentation (micromets train --stain-jitter)")
    ap.add_argument("--mil", choices=tissue_fit.MIL_MODES,
                    help="held-out runs: multiple-instance bags of the weak carcinoma tiles, beside (add) or instead "
                         "of (only) their nuclear window selection")
    ap.add_argument("--mpp", type=float, default=INPUT_MPP,
                    help="µm/px of the model input (the field is 96 px of it): another field of view, held out")
    args = ap.parse_args()
    try:
        check_args(args)
    except MicrometsError as err:
        print(f"tissue_heldout.py: error: {err}", file=sys.stderr)
        sys.exit(2)
    torch.set_num_threads(2)
    t0 = time.perf_counter()
    ts = tissue_data.build(args.data_root, target_mpp=args.mpp)
    stamp = f"{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%SZ}"
    if args.export_fold:
        card = tissue_fit.export_tissue_model(
            ts, args.out, args.data_root, steps=args.steps, seed=args.seed, width=args.width, stain_jitter=args.stain,
            name=f"micromets-tissue-{args.export_fold}", version="0.4.0", input_mpp=args.mpp,
            command="bench/tissue_heldout.py " + " ".join(sys.argv[1:]), fold=args.export_fold,
            log=lambda m: print(m, file=sys.stderr, flush=True))
        print(f"wrote {args.out / 'model.onnx'} and model.json (held out: {', '.join(card['held_out_groups'])}; "
              f"{card['training']['wall_s']:.0f} s)")
        return
    if args.model:
        from micromets.model import Detector

        detector = Detector.load(args.model)
        groups = detector.card.get("held_out_groups") if args.held_out_only else None
        report = tissue_fit.fixed_model_report(detector, ts, groups=groups)
        if detector.verifier is not None:  # the card's seed ensemble, scored on the same windows
            report["verifier"] = tissue_fit.fixed_model_report(detector.verifier, ts, groups=groups)
        report["wall_s"] = round(time.perf_counter() - t0, 1)
        out = Path(__file__).parent / "results" / f"tissue-fixed-{stamp}.json"
        out.write_text(json.dumps(report, indent=1) + "\n")
        for part in (report, report.get("verifier")):
            if part is None:
                continue
            print(f"{part['model']} (trained on {', '.join(part['trained_on'])}; "
                  f"held out: {', '.join(detector.card.get('held_out_groups') or ['none named'])})")
            for source, row in part["table"].items():
                print(f"| {source} | {row['kind']} | " + " | ".join(f"{k} {v}" for k, v in row.items()
                                                                 if k not in ("kind",)) + " |")
        print(f"\nwrote {out}")
        return
    report = tissue_fit.held_out_report(ts, [int(s) for s in args.seeds.split(",")], args.steps, width=args.width,
                                        folds=args.folds.split(",") if args.folds else None,
                                        save_models=args.save_models, stain_jitter=args.stain, mil=args.mil,
                                        log=lambda m: print(m, file=sys.stderr, flush=True))
    report["wall_s"], report["input_mpp"] = round(time.perf_counter() - t0, 1), args.mpp
    out = Path(__file__).parent / "results" / f"tissue-heldout-{stamp}.json"
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(markdown(report))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
