"""`micromets threshold`: the highest safe-negative threshold on a labelled validation batch."""

from pathlib import Path

import typer

from micromets.cli import validate
from micromets.cli.app import app


@app.command("threshold")
def threshold(
    db: str = typer.Option(..., "--db", callback=validate.IN_FILE, help="Results store of a batch over the validation slides."),
    labels: Path = typer.Option(..., "--labels", callback=validate.IN_FILE, help="CSV slide,label (slide = file name or id; label negative/"
                                                      "normal/0 or itc/micro/macro/tumour/1; CAMELYON17 "
                                                      "stage_labels files work as they are)."),
    target_sensitivity: float = typer.Option(1.0, "--target-sensitivity", callback=validate.in_range(0, 1, low_open=True), help="Share of positive slides that must "
                                                                               "stay flagged, in (0, 1]."),
    positive: str = typer.Option("itc,micro,macro,tumor,tumour,positive,1,true,yes", "--positive",
                                 help="Labels that count as positive, comma-separated (e.g. micro,macro to treat "
                                      "ITC slides as negative)."),
    fmt: str = typer.Option("table", "--format", help="table | json."),
) -> None:
    """Pick the highest threshold on the slide score (maximum heatmap tumour probability) that keeps the target
    sensitivity on a labelled validation set, and report the share of slides it would spare from review.

    Rule: a slide with score >= threshold is flagged for review, a slide with score < threshold is spared (a tie
    is flagged). With --target-sensitivity 1.0 every positive validation slide is flagged. Only slides that are
    both labelled and done in the store count; the threshold holds for slides like these (same scanner, stain and
    model) and rests on the number of positives reported."""
    import json
    from dataclasses import asdict

    import numpy as np
    from rich.console import Console
    from rich.table import Table

    from micromets.batch.store import open_store
    from micromets.batch.triage import read_labels, safe_negative_threshold
    from micromets.errors import MicrometsError

    if fmt not in ("table", "json"):
        raise MicrometsError(f"--format {fmt!r}: choose table or json")
    truth = read_labels(labels, tuple(p.strip().lower() for p in positive.split(",") if p.strip()))
    with open_store(db, read_only=True) as store:
        done = [r for r in store.slides(status="done") if r["slide_id"] in truth and r["max_probability"] is not None]
    if not done:
        raise MicrometsError(f"{labels}: none of its {len(truth)} labelled slides is done in {db}")
    result = safe_negative_threshold(np.array([r["max_probability"] for r in done]),
                                     np.array([truth[r["slide_id"]] for r in done]), target_sensitivity)
    report = {**asdict(result), "n_labelled": len(truth), "n_labelled_not_in_store": len(truth) - len(done)}
    if fmt == "json":
        typer.echo(json.dumps(report, indent=1))
        return
    table = Table(title=f"safe-negative threshold at sensitivity >= {target_sensitivity:g} "
                        f"(flag score >= threshold, spare score < threshold)")
    table.add_column("quantity")
    table.add_column("value", justify="right")
    for key, value in report.items():
        table.add_row(key, f"{value:.4g}" if isinstance(value, float) else str(value))
    Console().print(table)
