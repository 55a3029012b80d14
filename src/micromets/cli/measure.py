"""`micromets measure`: lesion outlines from annotation files → one row of sizes and class per file."""

from pathlib import Path
from typing import Optional

import typer

from micromets.cli import validate
from micromets.cli.app import app
from micromets.sizes import format_mm
from micromets.words import counted


@app.command("measure")
def measure(
    files: list[Path] = typer.Argument(..., help="Annotation files with tumour outlines in level-0 pixels."),
    fmt: Optional[str] = typer.Option(
        None, "--format", "-f",
        help="asap (ASAP/CAMELYON XML), geojson (QuPath) or camelyon16-json ({'positive': [...]}); "
        "default: from the suffix (.xml asap, .geojson geojson, .json by its content).",
    ),
    mpp: float = typer.Option(..., "--mpp", callback=validate.MPP, help="Level-0 resolution in µm per pixel (CAMELYON16: 0.243)."),
    gap_um: float = typer.Option(
        75.0, "--gap-um", callback=validate.NON_NEGATIVE, help="Outlines at most this far apart (µm) form one lesion (CAMELYON: 75 µm ≈ 5 cells)."
    ),
    out: Optional[Path] = typer.Option(None, "--out", "-o", callback=validate.OUT_FILE, help="CSV table to write (default: print only)."),
) -> None:
    """Measure the tumour outlines of each file and classify the node by its largest lesion.

    Outlines closer than --gap-um are grouped into one lesion and measured on their original shapes. The
    largest diameter is the exact maximum Feret (caliper) diameter in mm, the area in mm². Class by AJCC 8:
    ITC <= 0.2 mm, micrometastasis > 0.2 and <= 2.0 mm, macrometastasis > 2.0 mm (no lesion: negative, no size).
    Columns: slide, n_lesions, largest_diameter_mm, largest_area_mm2, node_class. Exclusion regions in the file
    are cut out; outlines without area are skipped and self-intersecting ones repaired, with a note on stderr.
    A file that cannot be read is reported in one line; the others are still measured and the exit code is 2.
    """
    import csv
    import sys

    from rich.console import Console
    from rich.table import Column, Table

    from micromets.annotations import read_annotations
    from micromets.errors import MicrometsError
    from micromets.measure import measure_lesions
    from micromets.rules.ajcc8 import node_class

    if not (mpp > 0):
        raise MicrometsError(f"--mpp must be a positive number of µm per pixel, got {mpp}")
    errors = Console(stderr=True)
    rows, failed = [], 0
    for path in files:
        try:
            annotation = read_annotations(path, fmt)
            lesions = measure_lesions(annotation.geometries_l0(), mpp, gap_um)
            largest = lesions[0] if lesions else None
            largest_class = node_class(largest.diameter_mm if largest else None)
        except MicrometsError as err:  # this file is reported and skipped; the others are still measured
            failed += 1
            print(f"micromets: error: {err}" if str(path) in str(err) else f"micromets: error: {path}: {err}",
                  file=sys.stderr)
            continue
        for note in annotation.skipped:
            errors.print(f"{path.name}: skipped {note}", highlight=False)
        if annotation.n_invalid:
            errors.print(f"{path.name}: repaired {counted(annotation.n_invalid, 'self-intersecting outline')}", highlight=False)
        rows.append({
            "slide": path.stem,
            "n_lesions": len(lesions),
            "largest_diameter_mm": round(largest.diameter_mm, 6) if largest else None,
            "largest_area_mm2": round(largest.area_mm2, 4) if largest else None,
            "node_class": largest_class,
        })
    if out is not None and rows:
        with open(out, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]), lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)
    table = Table("lesions", "largest diameter (mm)", "largest area (mm²)", "class (AJCC 8)")
    table.columns.insert(0, Column("slide", no_wrap=True))
    for row in rows:
        table.add_row(row["slide"], str(row["n_lesions"]), format_mm(row["largest_diameter_mm"], unit=False),
                      "—" if row["largest_area_mm2"] is None else f"{row['largest_area_mm2']:.4f}", row["node_class"])
    Console().print(table)
    if failed:
        raise typer.Exit(code=MicrometsError.exit_code)
