"""Add a seed-ensemble verifier to a model folder (issue 14; micromets.train.ensemble).

    PYTHONPATH=src .venv/bin/python bench/verifier.py --into src/micromets/models/default \
        --members build/models/tissue-0.5.1,build/models/tissue-0.5.1-s1,build/models/tissue-0.5.1-s2 \
        --confirm-at-operating-point

Writes ``INTO/verifier.onnx``, one graph averaging the members' softmax, and the card's ``verifier`` entry (file,
output, members with their name, version, seed, training command and quantisation). With ``--confirm-at-operating-
point`` the card's ``confirm_threshold`` becomes the averaged models' held-out operating point (the card's
``metrics.held_out.ensemble.table.operating_point``, from ``bench/tissue_heldout.py`` with the members' seeds): the
lowest threshold at which the sources they never saw average at most 5 % of their fields called tumour, since the
verifier's score is what a lesion is confirmed by. The members are model folders of the same recipe and classes
trained with different seeds (``micromets train --seed S``), usually the INT8 graphs of ``bench/quantise.py``. Checks, on random input, that the graph's output is the mean of the
members' probabilities (max |Δp| recorded in the card).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from micromets.errors import MicrometsError
from micromets.model import Detector, import_onnxruntime
from micromets.train.ensemble import VERIFIER_FILE, ensemble_onnx


def add_verifier(into: Path, members: list[Path], confirm_at_operating_point: bool = False) -> dict:
    """Write ``into/verifier.onnx`` and the card's ``verifier`` entry (module docstring); everything is checked
    before anything is written."""
    detectors = [Detector.load(m) for m in members]
    primary = Detector.load(into)
    for d in detectors:
        if d.card["classes"] != primary.card["classes"] or d.patch_px != primary.patch_px:
            raise MicrometsError(f"{d.model_dir}: classes or patch size differ from {into}")
    card = json.loads((into / "model.json").read_text())
    entry = {
        "file": VERIFIER_FILE, "output": "probabilities",
        "combination": "mean softmax of the members (micromets.train.ensemble); confirms again the lesions the "
                       "detector's confirmation calls (micromets.analyze.confirmation)",
        "members": [{"name": d.name, "version": d.version, "seed": d.card.get("training", {}).get("seed"),
                     "command": d.card.get("command"), "quantisation": "quantisation" in d.card}
                    for d in detectors]}
    if confirm_at_operating_point:
        ensemble = ((card.get("metrics") or {}).get("held_out") or {}).get("ensemble") or {}
        seeds = sorted(m["seed"] for m in entry["members"])
        if sorted(ensemble.get("members") or []) != seeds:
            raise MicrometsError(f"{into}: the card's held-out ensemble ({ensemble.get('members')}) is not of the "
                                 f"members' seeds {seeds}")
        card["confirm_threshold"] = ensemble["table"]["operating_point"]["threshold"]
        entry["confirm_threshold_from"] = ("metrics.held_out.ensemble.table.operating_point: the averaged members, "
                                           "held out by whole source")
    ensemble_onnx([m / "model.onnx" for m in members], into / VERIFIER_FILE)
    session = import_onnxruntime().InferenceSession(str(into / VERIFIER_FILE), providers=["CPUExecutionProvider"])
    verifier = Detector(into, {**primary.card, "output": entry["output"]}, session, primary.threads, primary.batch_size)
    patches = np.random.default_rng(0).integers(0, 255, (32, primary.patch_px, primary.patch_px, 3), dtype=np.uint8)
    diff = float(np.abs(verifier.predict(patches) - np.mean([d.predict(patches) for d in detectors], axis=0)).max())
    if diff > 1e-4:
        raise RuntimeError(f"verifier differs from the members' mean by {diff:.2e}")
    entry["check_max_abs_diff"] = round(diff, 8)
    card["verifier"] = entry
    (into / "model.json").write_text(json.dumps(card, indent=2) + "\n")
    return entry


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--into", type=Path, required=True, help="the model folder that gets the verifier")
    ap.add_argument("--members", required=True, help="comma-separated model folders (>= 2)")
    ap.add_argument("--confirm-at-operating-point", action="store_true",
                    help="set the card's confirm_threshold to the averaged members' held-out operating point")
    args = ap.parse_args()
    members = [Path(m) for m in args.members.split(",") if m]
    try:
        if len(members) < 2:
            raise MicrometsError("--members: at least two model folders")
        verifier = add_verifier(args.into, members, args.confirm_at_operating_point)
    except MicrometsError as err:
        print(f"verifier.py: error: {err}", file=sys.stderr)
        sys.exit(2)
    names = ", ".join(f"{m['name']} {m['version']}" for m in verifier["members"])
    print(f"wrote {args.into / VERIFIER_FILE}: mean of {names}")


if __name__ == "__main__":
    main()
