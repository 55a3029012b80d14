"""`micromets results`: list, filter and export what a batch stored (slides, lesions, nodes, patients, runs)."""

from pathlib import Path
from typing import Optional

import typer

from micromets.cli import validate
from micromets.cli.app import app
from micromets.sizes import format_mm
from micromets.words import counted

_LEVELS = ("slides", "worklist", "lesions", "nodes", "patients", "runs")
_WORKLIST_COLUMNS = ("rank", "slide_id", "max_probability", "node_class", "largest_deposit_mm", "n_lesions", "path",
                     "out_dir")
_TABLE_COLUMNS = {
    "slides": ("slide_id", "status", "node_class", "largest_deposit_mm", "max_probability", "n_lesions", "l0_mpp",
               "stain", "error"),
    "lesions": ("slide_id", "lesion_id", "class", "diameter_mm", "area_mm2", "ellipse_major_mm", "max_probability",
                "n_cells"),
    "nodes": ("patient", "node", "node_class", "largest_deposit_mm", "osna_copies_per_ul", "decided_by"),
    "patients": ("patient", "stage_mode", "pn_stage", "stage_reason"),
    "runs": ("run_id", "started_utc", "finished_utc", "executor", "model_name", "model_version", "n_inputs", "n_done",
             "n_failed", "n_skipped"),
}


@app.command("results")
def results(
    db: str = typer.Option(..., "--db", callback=validate.IN_FILE, help="Results store written by `micromets batch` (SQLite file)."),
    level: str = typer.Option("slides", "--level", help="slides | worklist (done slides, most suspicious first, "
                                                        "ranked) | lesions | nodes | patients | runs."),
    fmt: str = typer.Option("table", "--format", help="table | csv | json."),
    node_class: Optional[list[str]] = typer.Option(None, "--class", callback=validate.NODE_CLASS, help="Keep slides/nodes of this class "
                                                                        "(negative, itc, micro, macro); repeatable."),
    pn: Optional[list[str]] = typer.Option(None, "--pn", help="Keep patients of this pN stage (e.g. pN1mi); "
                                                              "repeatable."),
    min_probability: Optional[float] = typer.Option(None, "--min-probability", callback=validate.PROBABILITY, help="Keep slides whose maximum "
                                                                                    "tumour probability is >= this."),
    status: Optional[str] = typer.Option(None, "--status", callback=validate.one_of("done", "failed"), help="Keep slides that are done or failed."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", callback=validate.OUT_FILE, help="Write to this file instead of stdout."),
    old_output: Optional[Path] = typer.Option(None, "--output", callback=validate.OUT_FILE, hidden=True),
) -> None:
    """List and export batch results. Slides are sorted most suspicious first (maximum heatmap tumour
    probability, then largest deposit in mm); sizes are in mm (maximum Feret diameter), areas in mm², resolution
    in µm/px. Node classes follow AJCC 8 (ITC <= 0.2 mm, micro > 0.2 and <= 2.0 mm, macro > 2.0 mm)."""
    import csv
    import io
    import json

    from rich.console import Console
    from rich.table import Table

    from micromets.batch.store import open_store
    from micromets.batch.triage import select_slides
    from micromets.errors import MicrometsError

    out = validate.renamed(out, old_output, "--out", "--output")
    if level not in _LEVELS:
        raise MicrometsError(f"--level {level!r}: choose one of {', '.join(_LEVELS)}")
    if fmt not in ("table", "csv", "json"):
        raise MicrometsError(f"--format {fmt!r}: choose table, csv or json")
    classes = tuple(node_class or ())
    with open_store(db, read_only=True) as store:
        if level in ("slides", "worklist"):
            rows = select_slides(store.slides(), classes, min_probability, "done" if level == "worklist" else status)
            if level == "worklist":
                rows = [{"rank": i, **{k: r[k] for k in _WORKLIST_COLUMNS[1:]}} for i, r in enumerate(rows, start=1)]
        elif level == "nodes":
            rows = [r for r in store.nodes() if not classes or r["node_class"] in classes]
        elif level == "patients":
            rows = [r for r in store.patients() if not pn or r["pn_stage"] in pn]
        else:
            rows = getattr(store, level)()
    columns = _WORKLIST_COLUMNS if level == "worklist" else (list(rows[0]) if rows else [])
    if fmt == "json":
        text = json.dumps(rows, indent=1) + "\n"
    elif fmt == "csv":
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        text = buffer.getvalue()
    else:
        shown = _WORKLIST_COLUMNS if level == "worklist" else _TABLE_COLUMNS[level]
        table = Table(title=f"worklist: {counted(len(rows), 'slide')}" if level == "worklist"
                      else counted(len(rows), level.removesuffix("s"), level))
        for column in shown:
            table.add_column(column)
        for row in rows:
            table.add_row(*("" if row.get(c) is None else format_mm(row[c], unit=False) if c.endswith("_mm")
                            else f"{row[c]:.4g}" if isinstance(row[c], float) else str(row[c]) for c in shown))
        if out:
            with open(out, "w") as fh:
                Console(file=fh, width=200).print(table)
        else:
            console = Console()
            if not console.is_terminal:
                console = Console(width=200)
            console.print(table)
        return
    if out:
        out.write_text(text)
    else:
        typer.echo(text, nl=False)
