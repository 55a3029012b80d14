"""`micromets analyze`: slides → per-slide results folders."""

from pathlib import Path
from typing import Optional

import typer

from micromets.cli import validate
from micromets.cli.app import app
from micromets.sizes import format_mm


@app.command("analyze")
def analyze(
    slides: list[Path] = typer.Argument(..., help="Whole-slide images (SVS, TIFF, NDPI, MRXS, DICOM, … anything OpenSlide reads)."),
    out: Path = typer.Option(..., "--out", "-o", callback=validate.OUT_FOLDER, help="Output folder; each slide gets OUT/<slide>/ "
                                                      "(OUT/<slide>~<hash>/ when another file has that name)."),
    mpp: Optional[float] = typer.Option(None, "--mpp", callback=validate.L0_MPP, help="Override the level-0 resolution in µm/px (else read from the slide's metadata)."),
    stain: Optional[str] = typer.Option(None, "--stain", callback=validate.STAIN, help="he or ihc (default: detected from the slide's colours)."),
    model: Optional[Path] = typer.Option(None, "--model", callback=validate.MODEL, help="An installed model by name (see micromets models) or a folder with model.onnx + model.json (default: the bundled model)."),
    threshold: Optional[float] = typer.Option(None, "--threshold", callback=validate.PROBABILITY, help="Tumour probability above which a heatmap cell is tumour (default: the model card's)."),
    gap_um: float = typer.Option(75.0, "--gap-um", callback=validate.NON_NEGATIVE, help="Deposits closer than this (µm) form one lesion (CAMELYON: 75 µm ≈ 5 tumour cells)."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", callback=validate.COUNT, help="Most patches per inference run (default: the model card's batch_size, 128 for the bundled models); results do not depend on it."),
    threads: int = typer.Option(2, "--threads", callback=validate.COUNT, help="CPU threads of inference: patches are split into this many chunks run at once (default 2)."),
    mode: str = typer.Option("thorough", "--mode", callback=validate.DETECTOR_MODE, help="thorough (default): the fine model (≈0.5 µm/px) over all tissue. fast: a coarse screen at 2 µm/px over all tissue (the model card of src/micromets/models/coarse), then the fine model (≈0.5 µm/px) on the screen's candidates and, cell by cell, over the whole of every region it finds tumour in (those lesions are measured exactly as in thorough mode); faster, but a deposit the screen misses is lost, and isolated tumour cells (< 0.2 mm) are easily missed, so fast mode can miss ITC. result.json records the mode."),
) -> None:
    """Find and measure tumour deposits in each slide.

    Writes OUT/<slide>/result.json (resolution in µm/px, tissue area in mm², node class, largest deposit in mm,
    each lesion with its level-0 outline, area in mm², maximum Feret diameter in mm and maximum probability),
    heatmap.png (thumbnail with the tumour heatmap and outlines), heatmap.npy and lesions.geojson (QuPath).
    Deposit classes follow AJCC 8: ITC <= 0.2 mm (or < 200 cells), micrometastasis > 0.2 and <= 2.0 mm,
    macrometastasis > 2.0 mm. --mode fast screens at 2 µm/px first and can miss ITC; thorough is the default.
    A slide that fails (unreadable, no tissue, unknown resolution) is reported in one
    line and skipped; the others are still analysed; the exit code is then 2.
    """
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from micromets.analyze import analyze_slide
    from micromets.errors import MicrometsError
    from micromets.folders import plan_folders
    from micromets.model import Detector, coarse_model_dir

    console = Console(stderr=True)
    detector = Detector.load(model, threads=threads, batch_size=batch_size)
    screen = Detector.load(coarse_model_dir(), threads=threads, batch_size=batch_size) if mode == "fast" else None
    failed = 0
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[patches]}"),
                  TimeElapsedColumn(), console=console) as bar:
        for path, folder in zip(slides, plan_folders(slides, out)):
            task = bar.add_task(path.name, total=None, patches="")
            try:
                result = analyze_slide(path, out, mpp=mpp, mode=mode, detector=detector, screen=screen, stain=stain,
                                       folder=folder,
                                       threshold=threshold, gap_um=gap_um, progress=lambda done, total: bar.update(
                                           task, completed=done, total=total, patches=f"{done}/{total} patches"))
            except MicrometsError as err:
                failed += 1
                bar.remove_task(task)  # the error line says it: no "failed 0/None patches" bar
                console.print(f"micromets: error: {err}", soft_wrap=True, markup=False, highlight=False)
                continue
            largest = result["largest_deposit_mm"]
            size = f"largest {format_mm(largest)}" if largest is not None else "no deposit"
            bar.update(task, description=f"{path.name}: {result['node_class']} ({size})")
    if failed:
        raise typer.Exit(code=MicrometsError.exit_code)
