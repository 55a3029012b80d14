"""`micromets view`: the browser viewer over a results folder."""

from pathlib import Path

import typer

from micromets.cli.app import app


@app.command("view")
def view(
    results_dir: Path = typer.Argument(..., help="Output folder of `micromets case` or `micromets analyze`."),
    port: int = typer.Option(8765, "--port", help="TCP port to listen on."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind; the default serves this computer only. "
                                                          "Use 0.0.0.0 only on a trusted network."),
) -> None:
    """Serve a zoomable viewer of the slides in RESULTS_DIR at http://HOST:PORT/.

    Case → node → slide navigation with the patient's pN stage and the node class always shown; the tumour
    heatmap (probability 0–1) as a layer with on/off and opacity; lesion outlines coloured by class (ITC
    <= 0.2 mm, micrometastasis > 0.2 and <= 2.0 mm, macrometastasis > 2.0 mm) and labelled with their maximum
    Feret diameter in mm; a list of deposits sorted by size that zooms to each; a ruler reading µm/mm and a scale
    bar. Review: accept, reject or reclassify each finding (lesions and unconfirmed candidates), draw a missed
    deposit, save a ruler, comment and sign out; each decision is appended with who and when to
    <patient>/review.jsonl, the node classes and pN stage are recomputed from them, and the report shows proposed
    vs decided. Slides are never written. Only slides named by a result.json under RESULTS_DIR are served.
    Research use only.
    """
    import uvicorn

    from micromets.viewer import create_app
    from micromets.viewer.app import OSD_JS

    application = create_app(results_dir)
    if not OSD_JS.is_file():
        typer.echo(f"warning: OpenSeadragon missing at {OSD_JS}; run `make viewer-assets`", err=True)
    typer.echo(f"micromets viewer: http://{host}:{port}/  ({len(application.state.catalog.slides)} slides)")
    uvicorn.run(application, host=host, port=port, log_level="warning")
