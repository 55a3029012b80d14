"""`micromets bench`: accuracy, speed and memory of the whole pipeline on phantom slides of known truth."""

from pathlib import Path
from typing import Optional

import typer

from micromets.cli import validate
from micromets.cli.app import app


@app.command("bench")
def bench(
    phantoms: Optional[Path] = typer.Option(None, "--phantoms", help="An existing phantom set (folder with manifest.csv from `micromets phantom`, or the manifest itself). Default: build (or reuse, by hash) the default set in --work."),
    out: Path = typer.Option(Path("bench/results"), "--out", "-o", callback=validate.OUT_FOLDER, help="Where <date>.json and <date>.md go."),
    work: Path = typer.Option(Path("bench/work"), "--work", callback=validate.OUT_FOLDER, help="Scratch folder: phantom sets and per-run outputs."),
    model: Optional[Path] = typer.Option(None, "--model", callback=validate.MODEL, help="An installed model by name (see micromets models) or a folder with model.onnx + model.json (default: the bundled model)."),
    modes: str = typer.Option("thorough", "--modes", help="Comma-separated analysis modes to time and score (a mode the pipeline does not offer is reported as skipped)."),
    large: bool = typer.Option(False, "--large", help="Add a CAMELYON-size slide (100,000 x 200,000 px at 0.243 µm/px; hours to build and run)."),
    baseline: bool = typer.Option(True, "--baseline/--no-baseline", help="Also time the simplest correct approach (one level-0 read per patch, batch 1, no prefetch) on the speed slides."),
    normal_tiles: Optional[Path] = typer.Option(None, "--normal-tiles", help="Normal tiles for the default set (default: the bundled CC0 CAMELYON16 tiles)."),
    tumour_tiles: Optional[Path] = typer.Option(None, "--tumour-tiles", help="Tumour tiles for the default set (default: the bundled CC0 CAMELYON16 tiles)."),
    tiles_mpp: float = typer.Option(0.243, "--tiles-mpp", callback=validate.MPP, help="Resolution of --normal-tiles/--tumour-tiles in µm/px."),
) -> None:
    """Run the real pipeline on phantom slides and score it against their exact ground truth.

    Accuracy: CAMELYON16 FROC (mean sensitivity at 1/4-8 false positives per slide; ITC < 275 µm ellipse major
    axis neither hit nor FP) and slide AUC; per-size-class lesion sensitivity (ITC <= 0.2 mm, micro 0.2-2.0 mm,
    macro > 2.0 mm maximum Feret diameter) at <= 1 FP per slide; diameter error in mm; node-class confusion;
    CAMELYON17 quadratic kappa of the pN stages of phantom patients. A detection hits a lesion when its outline
    touches the lesion dilated by 37.5 µm.
    Speed: seconds per slide and per cm² of tissue, patches/s, share of time reading / inference / post-processing,
    peak RSS (MB, each run in a fresh process), on a small and a 4x larger slide; the baseline runs on the same
    slides in the same run. The default set (15 slides at 0.243 µm/px, 7 of them negative nodes with real stroma and fat) takes about 20 min on 2 cores.
    """
    from micromets.bench import run_bench

    report = run_bench(phantoms, out, work, model, tuple(m.strip() for m in modes.split(",") if m.strip()),
                       large, baseline, normal_tiles, tumour_tiles, tiles_mpp,
                       log=lambda msg: typer.echo(msg, err=True))
    typer.echo(Path(report["files"][1]).read_text())
    typer.echo(f"bench: wrote {report['files'][0]} and {report['files'][1]}")
