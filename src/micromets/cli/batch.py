"""`micromets batch`: many slides → per-slide folders + a results store, resumable, optionally on Dask."""

from pathlib import Path
from typing import Optional

import typer

from micromets.cli import validate
from micromets.cli.app import app
from micromets.words import counted


@app.command("batch")
def batch(
    inputs: list[str] = typer.Argument(..., help="Folders (searched recursively for .svs .tif .tiff .ndpi .vms .vmu "
                                                 ".scn .mrxs .svslide .bif, and DICOM slides: folders of .dcm files), "
                                                 "glob patterns (quote them; ** recurses), "
                                                 "case manifests (.csv: patient,node,slide_path[,stain]"
                                                 "[,osna_copies_per_ul]) or single slide files."),
    out: Path = typer.Option(..., "--out", "-o", callback=validate.OUT_FOLDER, help="Output folder; each slide gets OUT/<slide_id>/ "
                                                      "(OUT/<slide_id>~<hash>/ when another file has that name); "
                                                      "a manifest's slides go to OUT/<patient>/<slide_id>/ beside "
                                                      "the patient's case.json, as with micromets case."),
    db: Optional[str] = typer.Option(None, "--db", help="Results store: a SQLite file path or sqlite:///path "
                                                        "(default OUT/results.sqlite)."),
    workers: int = typer.Option(1, "--workers", "-w", min=0, help="N = start a Dask LocalCluster of N worker "
                                                                   "processes: a slide that crashes or exhausts its "
                                                                   "worker fails alone. 0 = analyse in this process "
                                                                   "(no start-up cost, but a crash stops the batch)."),
    scheduler: Optional[str] = typer.Option(None, "--scheduler", help="Use an existing Dask cluster at "
                                                                      "tcp://host:port instead; its workers must "
                                                                      "see the slides and OUT at the same paths."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="threads per worker: N for "
                                                                         "inference plus N - 1 reading tiles "
                                                                         "ahead (default: cores ÷ workers)."),
    timeout_s: float = typer.Option(3600.0, "--slide-timeout-s", callback=validate.NON_NEGATIVE, help="A slide still being analysed after "
                                                                             "this many seconds is stopped and "
                                                                             "recorded as failed (0 = no limit)."),
    force: bool = typer.Option(False, "--force", help="Recompute slides already done with the same model and "
                                                      "settings (their folders and rows are replaced)."),
    identity: str = typer.Option("quick", "--identity", callback=validate.one_of("quick", "full"), help="Slide content id: quick = SHA-256 of size, mtime, "
                                                             "first and last MiB (renames keep it, rewrites change "
                                                             "it); full = SHA-256 of the whole file."),
    mpp: Optional[float] = typer.Option(None, "--mpp", callback=validate.L0_MPP, help="Override every slide's level-0 resolution, in µm/px."),
    stain: Optional[str] = typer.Option(None, "--stain", callback=validate.STAIN, help="he or ihc for every slide (default: the manifest's "
                                                              "stain column, else detected)."),
    model: Optional[Path] = typer.Option(None, "--model", callback=validate.MODEL, help="An installed model by name "
                                         "(see micromets models) or a folder with model.onnx + model.json (default: "
                                         "the bundled model)."),
    threshold: Optional[float] = typer.Option(None, "--threshold", callback=validate.PROBABILITY, help="Tumour probability above which a heatmap "
                                                                        "cell is tumour (default: the model card's)."),
    gap_um: Optional[float] = typer.Option(None, "--gap-um", callback=validate.NON_NEGATIVE, help="Deposits closer than this (µm) form one lesion "
                                                                  "(default 75 µm, CAMELYON)."),
    rule: str = typer.Option("camelyon17", "--rule", callback=validate.STAGE_MODE, help="Staging rule of manifest "
                                                                                        "patients: camelyon17 or ajcc8."),
    old_stage_mode: Optional[str] = typer.Option(None, "--stage-mode", callback=validate.STAGE_MODE, hidden=True),
    mode: str = typer.Option("thorough", "--mode", callback=validate.DETECTOR_MODE, help="Detector mode: thorough (default; the fine model over all "
                                                        "tissue) or fast (a coarse 2 µm/px screen, then the fine "
                                                        "model on its candidates, grown over each positive region; can miss ITC). Part of "
                                                        "the settings: a slide done in one mode is redone in the "
                                                        "other."),
) -> None:
    """Analyse a whole archive unattended, resumably, on one machine or a Dask cluster.

    Each slide is identified by its content (see --identity), so a renamed slide is not recomputed and a changed
    one is. Slides already done with the same model and settings (model name and version, --mpp, --stain,
    --threshold, --gap-um) are skipped unless --force. Every result folder appears whole (written aside, then
    renamed into place) and its row — node class (AJCC 8: ITC <= 0.2 mm, micro > 0.2 and <= 2.0 mm, macro > 2.0
    mm), largest deposit in mm, maximum tumour probability, lesions with diameter in mm and area in mm² — is
    committed in one transaction; killing the batch at any moment loses at most the slides in flight, and
    rerunning completes them. Bad files (unreadable, not a slide, no resolution, a folder named like a slide) are
    recorded as failed with their reason and the others go on; the exit code is then 2. List the results with
    `micromets results --db OUT/results.sqlite`. Patients of a case manifest are staged and get
    OUT/<patient>/case.json as with `micromets case`: `micromets report OUT` writes their reports and
    `micromets view OUT` groups their slides by patient and node.
    """
    from rich.console import Console
    from rich.markup import escape
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
    from rich.table import Table

    from micromets.batch.run import run_batch
    from micromets.errors import MicrometsError

    rule = validate.renamed(rule, old_stage_mode, "--rule", "--stage-mode", "camelyon17")
    console = Console(stderr=True)
    counts = {"done": 0, "failed": 0, "skipped": 0}
    # fits 80 columns whole (the elapsed time was cut to "0:00:…"); completed/total says what remains
    with Progress(TextColumn("[bold]batch"), BarColumn(bar_width=10), TextColumn("{task.completed}/{task.total}"),
                  TextColumn("[green]{task.fields[done]} done[/] · [red]{task.fields[failed]} failed[/] · "
                             "{task.fields[skipped]} skipped"),
                  TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=console,
                  refresh_per_second=1) as bar:  # it moves only when a slide ends; 10 redraws/s cost 0.03 core
        task = bar.add_task("batch", total=None, done=0, failed=0, skipped=0)

        def on_event(kind: str, row: dict) -> None:
            if kind == "planned":
                bar.update(task, total=row["total"])
                return
            counts[kind] += 1
            if kind == "failed":
                console.print(f"[red]failed[/] {escape(row['error'])}", soft_wrap=True)
            bar.update(task, advance=1, **counts)

        summary = run_batch(inputs, out, db, mode=mode, mpp=mpp, stain=stain, threshold=threshold,
                            gap_um=gap_um, model_dir=str(model) if model else None, identity=identity, force=force, workers=workers,
                            scheduler=scheduler, threads=threads, timeout_s=timeout_s, stage_mode=rule, on_event=on_event)

    table = Table(title=f"batch run {summary.run_id}: {counted(summary.n_inputs, 'slide')} in {summary.elapsed_s:.1f} s")
    for column in ("done", "skipped (done before)", "failed", "negative*", "itc*", "micro*", "macro*"):
        table.add_column(column, justify="right")
    classes = [row.get("node_class") for row in summary.rows if row["status"] == "done"]
    table.add_row(str(summary.n_done), str(summary.n_skipped), str(summary.n_failed),
                  *(str(classes.count(c)) for c in ("negative", "itc", "micro", "macro")))
    table.caption = "* node classes of the slides analysed in this run (all runs: micromets results)"
    Console().print(table)
    if summary.n_failed:
        raise typer.Exit(code=MicrometsError.exit_code)
