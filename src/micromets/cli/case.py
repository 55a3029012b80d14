"""`micromets case` and `micromets demo`: a patient's manifest → node classes, pN stage and report."""

import json
from pathlib import Path
from typing import Optional

import typer

from micromets.cli import validate
from micromets.cli.validate import one_of
from micromets.cli.app import app
from micromets.sizes import format_mm


def _run(manifest: Path, out: Path, rule: str, model: Optional[Path], mode: str = "thorough") -> list[dict]:
    from rich.console import Console
    from rich.markup import escape
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from micromets.case import run_case, stage_text
    from micromets.model import Detector, coarse_model_dir

    console = Console(stderr=True)
    bar = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[patches]}"),
                   TimeElapsedColumn(), console=console, transient=True)
    task = None

    def on_start(row):  # one bar per slide while it is analysed, as in `micromets analyze`
        nonlocal task
        task = bar.add_task(escape(f"patient {row.patient} node {row.node}: {row.slide_path.name}"), total=None,
                            patches="")

    def progress(done: int, total: int) -> None:
        bar.update(task, completed=done, total=total, patches=f"{done}/{total} patches")

    def on_slide(row, result, error):
        bar.remove_task(task)
        if error:
            console.print(f"micromets: error: {error}", soft_wrap=True, markup=False, highlight=False)
        else:
            size = result["largest_deposit_mm"]
            size_text = f"largest {format_mm(size)}" if size is not None else "no deposit"
            console.print(f"patient {row.patient} node {row.node}: {result['slide_id']} → {result['node_class']} "
                          f"({size_text})", markup=False, highlight=False)

    detector = Detector.load(model)
    screen = Detector.load(coarse_model_dir(), threads=detector.threads) if mode == "fast" else None
    with bar:
        cases = run_case(manifest, out, stage_mode=rule, detector=detector, on_slide=on_slide, scan_mode=mode,
                         screen=screen, on_start=on_start, progress=progress)
    for case in cases:
        console.print(f"[bold]patient {escape(case['patient'])}: {escape(stage_text(case))}[/bold] — "
                      f"{escape(case['stage_reason'])}", soft_wrap=True)
        if case.get("report"):
            console.print(f"report: {case['report']}")
    return cases


@app.command("case")
def case(
    manifest: Path = typer.Argument(..., callback=validate.IN_FILE, help="CSV with columns patient,node,slide_path[,stain][,osna_copies_per_ul]; slide paths relative to the CSV."),
    out: Path = typer.Option(..., "--out", "-o", callback=validate.OUT_FOLDER, help="Output folder; each patient gets OUT/<patient>/ with case.json and report.html."),
    rule: str = typer.Option("camelyon17", "--rule", callback=validate.STAGE_MODE, help="Staging rule: camelyon17 (pN0, pN0(i+), pN1mi, pN1, pN2) or ajcc8."),
    model: Optional[Path] = typer.Option(None, "--model", callback=validate.MODEL, help="An installed model by name (see micromets models) or a folder with model.onnx + model.json (default: the bundled model)."),
    # --mode was the staging rule here before it named the detector mode everywhere: a rule given to it still counts
    mode: str = typer.Option("thorough", "--mode", callback=one_of("thorough", "fast", also=("camelyon17", "ajcc8")), help="Detector mode of every H&E slide: thorough (default; the fine model over all tissue) or fast (a coarse 2 µm/px screen, then the fine model on its candidates, grown over each positive region; can miss ITC)."),
    old_scan_mode: Optional[str] = typer.Option(None, "--scan-mode", callback=validate.DETECTOR_MODE, hidden=True),
) -> None:
    """Analyse every slide of a case manifest and stage each patient.

    A node's class is the strongest finding over its slides (H&E, IHC) and its OSNA result (CK19 mRNA copies/µL:
    < 250 negative, 250-5,000 micrometastasis, > 5,000 macrometastasis). The patient's pN stage follows the chosen
    rule. A slide that fails is reported in one line and listed in case.json, the stage is marked provisional (on
    screen, in case.json and in the report) and the exit code is 2.
    """
    if mode in ("camelyon17", "ajcc8"):
        rule, mode = validate.renamed(rule, mode, "--rule", "--mode", "camelyon17"), "thorough"
    mode = validate.renamed(mode, old_scan_mode, "--mode", "--scan-mode", "thorough")
    cases = _run(manifest, out, rule, model, mode)
    if any(c["failed_slides"] for c in cases):
        raise typer.Exit(code=2)


# The demo case is package data, so `micromets demo` runs from any folder and from an installed wheel.
DEMO_CASE = Path(__file__).resolve().parents[1] / "data" / "demo"


@app.command("demo")
def demo(
    out: Path = typer.Option(Path("demo-out"), "--out", "-o", callback=validate.OUT_FOLDER, help="Output folder."),
    case_dir: Path = typer.Option(DEMO_CASE, "--case", help="Folder with manifest.csv and expected.json "
                                  "(default: the demo case installed with micromets)."),
) -> None:
    """Run the bundled demo case (three nodes of one patient) and compare the result with the known truth.

    The comparison is printed (MATCHES / DOES NOT MATCH, node by node); a mismatch is a finding about the bundled
    detector, not a failure of the run, so the exit code is 0 whenever the case ran.
    """
    expected = json.loads((case_dir / "expected.json").read_text())
    cases = _run(case_dir / "manifest.csv", out, "camelyon17", None)
    got = next(c for c in cases if c["patient"] == expected["patient"])
    got_nodes = {n["node"]: n["node_class"] for n in got["nodes"]}
    ok = got["pn_stage"] == expected["pn_stage"] and got_nodes == expected["nodes"]
    typer.echo(f"demo: expected {expected['pn_stage']} {expected['nodes']}; got {got['pn_stage']} {got_nodes}: "
               f"{'MATCHES' if ok else 'DOES NOT MATCH'}")
    for node, want in expected["nodes"].items():
        if got_nodes.get(node) != want:
            typer.echo(f"demo: node {node} is {want} in truth, {got_nodes.get(node)} by micromets "
                       "(see the README: limits of the bundled model)")
    typer.echo(f"demo: report at {Path(got.get('report') or out / got['patient'] / 'case.json').resolve()}")
