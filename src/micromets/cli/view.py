"""`micromets view`: the browser viewer over a results folder."""

from pathlib import Path
from typing import Optional

import typer

from micromets.cli import validate
from micromets.cli.app import app
from micromets.words import counted


@app.command("view")
def view(
    results_dir: Path = typer.Argument(..., help="Output folder of `micromets case` or `micromets analyze`."),
    port: int = typer.Option(8765, "--port", callback=validate.PORT, help="TCP port to listen on."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind; the default serves this computer only. "
                                                          "Use 0.0.0.0 only on a trusted network."),
    allow_host: Optional[list[str]] = typer.Option(
        None, "--allow-host", help="A host name (or address) the viewer may be reached by besides localhost, "
        "127.0.0.1, [::1] and --host; repeat for several, *.example.org for a domain. Requests naming any other "
        "host are refused (400), which keeps web pages from reading the viewer by DNS rebinding."),
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
    import socket

    import uvicorn

    from micromets.errors import MicrometsError
    from micromets.viewer import create_app
    from micromets.viewer.app import OSD_JS, allowed_host_names

    names = list(allow_host or [])
    if host not in ("0.0.0.0", "::", ""):
        names.append(f"[{host}]" if ":" in host else host)
    allowed_host_names(names)  # a malformed name is refused before the results folder is scanned
    application = create_app(results_dir, allowed_hosts=names)
    if not OSD_JS.is_file():
        typer.echo(f"warning: OpenSeadragon missing at {OSD_JS}; run `make viewer-assets`", err=True)
    try:  # bound here, so a busy port is one line and --port 0 prints the port the system chose
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as err:
        raise MicrometsError(f"--host {host} --port {port}: cannot listen there ({err.strerror or err})") from None
    port = sock.getsockname()[1]
    typer.echo(f"micromets viewer: http://{host}:{port}/  ({counted(len(application.state.catalog.slides), 'slide')})")
    uvicorn.Server(uvicorn.Config(application, log_level="warning")).run(sockets=[sock])
