"""`micromets report`: rebuild the case report (HTML + PDF) from a results folder."""

from pathlib import Path

import typer

from micromets.cli.app import app


@app.command("report")
def report(
    results_dir: Path = typer.Argument(..., help="A patient folder of `micromets case` (holding case.json), or the "
                                                 "case output folder (every patient folder under it is done)."),
    pdf: bool = typer.Option(True, "--pdf/--no-pdf", help="Also print report.pdf with headless Chromium "
                                                          "(skipped with a warning when Chromium is not installed)."),
) -> None:
    """Write report.html (self-contained, pictures embedded) and report.pdf for each patient.

    The report gives the patient's pN stage with the rule and the evidence that decided it; per node the class,
    the largest deposit in mm (maximum Feret diameter), tumour-cell count, number of deposits and OSNA CK19
    copies/µL; per slide a thumbnail with heatmap (tumour probability 0–1) and outlines, a crop of the largest
    deposit with a scale bar in µm/mm, the lesion table (diameters in mm, areas in mm²) and a bar plot of deposit
    sizes against the AJCC 8 boundaries: ITC <= 0.2 mm, micrometastasis > 0.2 and <= 2.0 mm, macrometastasis
    > 2.0 mm. It ends with the model card summary, software version, date and the SHA-256 of every slide.
    A case with a slide that failed or whose result.json is missing or unreadable gets a report marked
    provisional, one line per missing slide, and exit code 2. Research use only.
    """
    from micromets.cli import validate
    from micromets.errors import MicrometsError
    from micromets.report import find_patient_dirs, write_report

    patient_dirs = find_patient_dirs(results_dir)
    for patient_dir in patient_dirs:  # every output checked before any report is rendered
        validate.writable_file(patient_dir / "report.html")
        if pdf:
            validate.writable_file(patient_dir / "report.pdf")
    provisional = 0
    for patient_dir in patient_dirs:
        problems: list[str] = []
        html = write_report(patient_dir, pdf=pdf, problems=problems)
        pdf_path = html.with_suffix(".pdf")
        typer.echo(f"{html}" + (f"\n{pdf_path}" if pdf and pdf_path.is_file() else ""))
        for problem in problems:
            typer.echo(f"micromets: error: {patient_dir.name}: provisional report, {problem}", err=True)
        provisional += bool(problems)
    if provisional:
        raise typer.Exit(code=MicrometsError.exit_code)
