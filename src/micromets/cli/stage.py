"""`micromets stage`: node classes (CAMELYON17 stage_labels.csv format) → patient pN stages."""

from pathlib import Path
from typing import Optional

import typer

from micromets.cli import validate
from micromets.cli.app import app


@app.command("stage")
def stage(
    nodes_csv: Path = typer.Argument(
        ..., callback=validate.IN_FILE, help="CSV in the CAMELYON17 stage_labels.csv format: rows 'patient_NNN_node_K.tif,<class>' with class "
        "negative|itc|micro|macro; patient rows (patient_NNN.zip) are ignored."
    ),
    rule: str = typer.Option(
        "camelyon17", "--rule", callback=validate.STAGE_MODE,
        help="camelyon17: pN0, pN0(i+), pN1mi, pN1 (1-3 positive nodes incl. a macro), pN2 (>= 4); "
        "ajcc8: pN0 … pN3a with (i+) and (sn) (ITC-only nodes are examined but not positive).",
    ),
    sentinel_only: bool = typer.Option(
        True, "--sentinel-only/--axillary-dissection",
        help="ajcc8 only: nodes come from sentinel biopsy alone → '(sn)' suffix when fewer than 6 nodes.",
    ),
    out: Optional[Path] = typer.Option(
        None, "--out", "-o", callback=validate.OUT_FILE, help="Write the official submission format: 'patient,stage', each patient_NNN.zip row "
        "followed by its node rows.",
    ),
    old_mode: Optional[str] = typer.Option(None, "--mode", callback=validate.STAGE_MODE, hidden=True),
) -> None:
    """Stage every patient from the classes of its nodes and print (or write) the stages."""
    from rich.console import Console
    from rich.table import Table

    from micromets.errors import MicrometsError
    from micromets.evaluation.camelyon17 import read_stage_csv, write_submission
    from micromets.patient import stage_patient

    rule = validate.renamed(rule, old_mode, "--rule", "--mode", "camelyon17")
    _, nodes = read_stage_csv(nodes_csv)
    if not nodes:
        raise MicrometsError(f"{nodes_csv}: no node rows (patient_NNN_node_K.tif,<class>)")
    stages, table = {}, Table("patient", "stage", "reason")
    for patient, files in nodes.items():
        node_dicts = [{"node": name.rsplit("_node_", 1)[1].split(".")[0], "node_class": cls} for name, cls in files.items()]
        stages[patient], reason = stage_patient(node_dicts, rule, sentinel_only=sentinel_only)
        table.add_row(patient, stages[patient], reason)
    if out is not None:
        write_submission(out, stages, nodes)
    Console().print(table)
