"""`micromets evaluate camelyon16|camelyon17`: challenge metrics with the challenges' semantics."""

import json
from pathlib import Path
from typing import Optional

import typer

from micromets.cli import validate
from micromets.cli.app import app

evaluate_app = typer.Typer(
    help="Evaluate against CAMELYON references: camelyon16 (lesion FROC, slide AUC), camelyon17 (pN kappa).",
    no_args_is_help=True,
)
app.add_typer(evaluate_app, name="evaluate")


def _write(out: Optional[Path], result: dict) -> None:
    if out is not None:
        out.write_text(json.dumps(result, indent=1), encoding="utf-8")


@evaluate_app.command("camelyon16")
def camelyon16(
    detections: Path = typer.Argument(..., help="Folder of <slide>.csv files, rows 'probability,x,y' (x, y in level-0 px)."),
    reference: Path = typer.Argument(
        ..., help="Folder of reference outlines <slide>.xml (ASAP) or <slide>.json (polygon JSON / GeoJSON); "
        "a slide without one is a normal slide."
    ),
    mpp: float = typer.Option(0.243, "--mpp", callback=validate.MPP, help="Level-0 µm per pixel of the reference (CAMELYON16: 0.243)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", callback=validate.OUT_FILE, help="Write the full result (curve, per slide) as JSON."),
) -> None:
    """Lesion-level FROC and slide-level AUC as in CAMELYON16.

    Reference lesions: outlines rasterised at level 5 (32x downsample), dilated by 75/2 µm, holes filled,
    8-connected. Lesions with a fitted-ellipse major axis < 275 µm are ITC: hits on them count neither as true
    nor as false positives. FROC = mean sensitivity at 1/4, 1/2, 1, 2, 4, 8 false positives per slide.
    """
    from micromets.evaluation.camelyon16 import evaluate_camelyon16

    result = evaluate_camelyon16(detections, reference, mpp)
    _write(out, result)
    sens = ", ".join(f"{rate}: {value:.3f}" for rate, value in result["sensitivity_at"].items())
    auc = "n/a (needs tumour and normal slides)" if result["auc"] is None else f"{result['auc']:.4f}"
    typer.echo(f"slides {result['n_slides']}, lesions {result['n_lesions']} (non-ITC)")
    typer.echo(f"FROC {result['froc']:.4f}  (sensitivity at FP/slide {sens})")
    typer.echo(f"slide AUC {auc}")


@evaluate_app.command("camelyon17")
def camelyon17(
    submission: Path = typer.Argument(..., callback=validate.IN_FILE, help="Submission CSV 'patient,stage' (patient_NNN.zip rows; node rows optional)."),
    reference: Path = typer.Argument(..., callback=validate.IN_FILE, help="Reference CSV in the stage_labels.csv format."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", callback=validate.OUT_FILE, help="Write the result (kappa, confusion) as JSON."),
) -> None:
    """Quadratic-weighted Cohen's kappa over pN0, pN0(i+), pN1mi, pN1, pN2 (the CAMELYON17 score)."""
    from micromets.evaluation.camelyon17 import evaluate_camelyon17

    result = evaluate_camelyon17(submission, reference)
    _write(out, result)
    typer.echo(f"patients {result['n_patients']}, agreement {result['patient_accuracy']:.3f}")
    if result["node_accuracy"] is not None:
        typer.echo(f"nodes {result['n_nodes']}, node-class agreement {result['node_accuracy']:.3f}")
    typer.echo(f"kappa {result['kappa']:.4f} (quadratic weights)")
