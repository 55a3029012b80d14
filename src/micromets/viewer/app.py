"""The viewer's web application (FastAPI): Deep Zoom tiles, heatmap layer, lesion GeoJSON and the front end.

Routes (``KEY`` is a catalogue key, see :mod:`micromets.viewer.catalog`; nothing is addressed by file path):

- ``GET /`` — the front end (``static/index.html``; OpenSeadragon from ``static/vendor/openseadragon``);
- ``GET /api/catalog`` — cases → nodes → slide keys, with pN stage and node classes;
- ``GET /api/slides/KEY`` — one slide: size (level-0 px), µm/px, heatmap placement, lesions sorted by size;
- ``GET /api/slides/KEY/lesions.geojson`` — lesion outlines, level-0 pixels;
- ``GET /api/slides/KEY/lesions/ID/cells.geojson`` — nuclei of one H&E deposit (points, level-0 pixels; found
  on request as ``micromets analyze`` counts them, see :mod:`micromets.viewer.cells`);
- ``GET /api/slides/KEY/heatmap.png`` — the heatmap, one RGBA pixel per cell, placed by the front end at the
  cell grid's level-0 origin and size (``cell_um / l0_mpp`` level-0 px per cell);
- ``GET /api/cases/CASE/review`` — proposed and decided case, findings, audit log and sign-out
  (:mod:`micromets.review`); ``POST`` the same URL with one decision (JSON) to append it to the case's
  ``review.jsonl`` (409 once signed out, 400 for a bad decision; only ``application/json`` from this origin,
  so another web site cannot post); ``GET /api/cases/CASE/review.csv`` and
  ``GET /api/cases/CASE/review/SLIDE_ID.geojson`` export the decisions (QuPath reads the GeoJSON), and
  ``…/SLIDE_ID.xml`` the same outlines as ASAP XML (grouped by decided class);
  ``GET /api/cases/CASE/report`` renders the case report with the review. Nothing but ``review.jsonl`` and, at
  sign-out, ``report.html`` / ``report.pdf`` of the case is written; slides are only read.
- ``GET /dzi/KEY/slide.dzi`` and ``GET /dzi/KEY/slide_files/LEVEL/COL_ROW.jpeg`` — Deep Zoom descriptor and tiles.

Unknown keys, tiles outside the pyramid and any path outside ``static/`` answer 404; a file named by a
result.json (``heatmap.file``) is served only when it resolves inside the results folder (an absolute path or
``../`` is a 404). Handlers are plain functions, which FastAPI runs in its thread pool, so tile requests are served
concurrently; cell layers and heatmap images are computed once per key however many requests ask at the same
time, at most two at once, and a bounded number kept (:class:`~micromets.viewer.compute_cache.ComputeCache`).

Requests must name this computer (``Host: localhost``, ``127.0.0.1`` or ``[::1]``, any port) or a host name the
caller allows (``allowed_hosts``); any other ``Host`` header answers 400. A web page the browser loaded from
another name cannot read the viewer even when that name is made to resolve to 127.0.0.1 (DNS rebinding).
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from PIL import Image
from starlette.middleware.trustedhost import TrustedHostMiddleware

from micromets import review
from micromets.errors import MicrometsError
from micromets.report.figures import CLASS_COLOURS, heatmap_rgba, prob_colours
from micromets.viewer.catalog import Catalog, SlideEntry, build_catalog, lesions_geojson, slide_summary
from micromets.errors import MicrometsError
from micromets.viewer.cells import lesion_cells_geojson
from micromets.viewer.compute_cache import ComputeCache
from micromets.viewer.tiles import TileServer

STATIC_DIR = Path(__file__).parent / "static"
OSD_JS = STATIC_DIR / "vendor" / "openseadragon" / "openseadragon.min.js"
#: The heatmap image is upscaled (nearest neighbour, integer factor <= 8) to at most 4096 px on its long side.
HEATMAP_MAX_UPSCALE = 8
HEATMAP_MAX_PX = 4096
#: Host names every viewer answers to: this computer's loopback names (the port is not checked).
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]")
#: Cell layers kept (each a few hundred kB) and computed at once (each about 1 s of CPU and 0.2 GB at its peak).
CELLS_CACHE_ITEMS = 64
CELLS_MAX_CONCURRENT = 2
#: Heatmap images kept (each at most 4096² px as PNG) and built at once.
HEATMAP_CACHE_ITEMS = 32
HEATMAP_MAX_CONCURRENT = 2


def _entry(catalog: Catalog, key: str) -> SlideEntry:
    entry = catalog.slides.get(key)
    if entry is None:
        raise HTTPException(status_code=404, detail="no such slide in this results directory")
    return entry


def _case_of(catalog: Catalog, key: str) -> dict | None:
    for case in catalog.cases:
        if case["patient"] is not None and any(key in node["slides"] for node in case["nodes"]):
            return case
    return None


def allowed_host_names(extra: Iterable[str] = ()) -> list[str]:
    """The loopback names plus ``extra`` (host names or addresses, ``*.example.org`` for a domain), lower case.

    Raises :class:`MicrometsError` for a name that is empty, holds a port, a path or a misplaced ``*``.
    """
    names = list(LOOPBACK_HOSTS)
    for name in extra:
        host = name.strip().lower()
        bare = host.removeprefix("*.")
        if (not bare or "*" in bare or "/" in host or any(c.isspace() for c in host)
                or (":" in host and not (host.startswith("[") and host.endswith("]")))):
            raise MicrometsError(f"allowed host {name!r}: give a host name or address without port "
                                 "(e.g. viewer.lab.example, 192.168.1.20, [fe80::1], *.lab.example)")
        names.append(host)
    return names


def _file_inside(root: Path, folder: Path, name: object) -> Path | None:
    """``folder / name`` when it is an existing file that resolves inside ``root``, else None."""
    if not isinstance(name, str) or not name or "\0" in name:
        return None
    try:
        path = (folder / name).resolve()
    except (OSError, RuntimeError, ValueError):
        return None
    return path if path.is_relative_to(root) and path.is_file() else None


def _heatmap_png(path: Path) -> bytes | None:
    """The heatmap at ``path`` (a 2-D float .npy) as the layer's PNG, or None when it is not one."""
    try:
        h_prob = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError):
        return None
    if h_prob.ndim != 2 or not np.issubdtype(h_prob.dtype, np.number) or 0 in h_prob.shape:
        return None
    rgba = heatmap_rgba(h_prob)
    # Nearest-neighbour upscaling keeps cells crisp when the browser smooths the layer while zooming.
    k = max(1, min(HEATMAP_MAX_UPSCALE, HEATMAP_MAX_PX // max(rgba.shape[:2])))
    buf = io.BytesIO()
    Image.fromarray(rgba.repeat(k, axis=0).repeat(k, axis=1), mode="RGBA").save(buf, format="PNG")
    return buf.getvalue()


def create_app(results_dir: str | Path, tile_server: TileServer | None = None,
               allowed_hosts: Iterable[str] = ()) -> FastAPI:
    """The viewer application for one results directory (scanned once, at creation).

    ``allowed_hosts``: host names the viewer answers to besides the loopback ones (see the module docstring).
    """
    catalog = build_catalog(results_dir)
    tiles = tile_server or TileServer(catalog)
    heatmaps = ComputeCache(HEATMAP_CACHE_ITEMS, HEATMAP_MAX_CONCURRENT)
    cells_cache = ComputeCache(CELLS_CACHE_ITEMS, CELLS_MAX_CONCURRENT)
    app = FastAPI(title="micromets viewer", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=allowed_host_names(allowed_hosts), www_redirect=False)
    app.state.catalog = catalog
    app.state.tiles = tiles
    app.state.cells = cells_cache
    app.state.heatmaps = heatmaps

    @app.get("/")
    def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    @app.get("/api/catalog")
    def api_catalog() -> JSONResponse:
        slides = {k: {"slide_id": e.result.get("slide_id"), "node_class": e.result.get("node_class"),
                      "stain": e.result.get("stain")} for k, e in catalog.slides.items()}
        return JSONResponse({"cases": catalog.cases, "slides": slides, "unreadable": catalog.unreadable,
                             "viewer_ready": OSD_JS.is_file(),
                             "class_colours": CLASS_COLOURS,
                             "prob_colours": prob_colours(np.linspace(0, 1, 11)).tolist()})

    @app.get("/api/slides/{key}")
    def api_slide(key: str) -> JSONResponse:
        return JSONResponse(slide_summary(_entry(catalog, key), _case_of(catalog, key)))

    @app.get("/api/slides/{key}/lesions.geojson")
    def api_lesions(key: str) -> JSONResponse:
        return JSONResponse(lesions_geojson(_entry(catalog, key)), media_type="application/geo+json")

    @app.get("/api/slides/{key}/lesions/{lesion_id:int}/cells.geojson")
    def api_cells(key: str, lesion_id: int) -> JSONResponse:
        entry = _entry(catalog, key)
        lesion = next((les for les in entry.result.get("lesions", []) if les["id"] == lesion_id), None)
        if lesion is None or entry.result.get("stain") != "he":
            raise HTTPException(status_code=404, detail="no such H&E lesion")
        data = cells_cache.get((key, lesion_id),
                               lambda: lesion_cells_geojson(entry.result["path"], entry.result["l0_mpp"], lesion))
        return JSONResponse(data, media_type="application/geo+json")

    @app.get("/api/slides/{key}/heatmap.png")
    def api_heatmap(key: str) -> Response:
        entry = _entry(catalog, key)
        hm = entry.result.get("heatmap")
        path = _file_inside(catalog.root, entry.result_dir, hm.get("file", "heatmap.npy") if isinstance(hm, dict)
                            else "heatmap.npy")
        if path is None:
            raise HTTPException(status_code=404, detail="no heatmap for this slide in this results directory")
        data = heatmaps.get(key, lambda: _heatmap_png(path))
        if data is None:
            raise HTTPException(status_code=404, detail="heatmap file unreadable")
        return Response(data, media_type="image/png", headers={"Cache-Control": "max-age=3600"})

    def case_dir(case_key: str) -> Path:
        """The patient folder of ``case_key``; 404 unless it and its audit log resolve inside the results folder
        (a link placed there must not make the review read or append to a file elsewhere)."""
        path = catalog.case_dirs.get(case_key)
        if path is None:
            raise HTTPException(status_code=404, detail="no such case in this results directory")
        for inside in (path, path / review.LOG_NAME):
            try:
                real = inside.resolve()
            except (OSError, RuntimeError):
                real = None
            if real is None or not real.is_relative_to(catalog.root) or (inside != path and inside.is_dir()):
                raise HTTPException(status_code=404, detail="no such case in this results directory")
        return path

    @app.get("/api/cases/{case_key}/review")
    def api_review(case_key: str) -> JSONResponse:
        return JSONResponse(review.review_state(case_dir(case_key)))

    @app.post("/api/cases/{case_key}/review")
    async def api_decide(case_key: str, request: Request) -> JSONResponse:
        path = case_dir(case_key)
        origin = request.headers.get("origin")
        if request.headers.get("content-type", "").split(";")[0] != "application/json" or (
                origin is not None and origin.split("://")[-1] != request.headers.get("host")):
            raise HTTPException(status_code=403, detail="decisions are accepted as JSON from the viewer only")
        try:
            event = await request.json()
        except ValueError:
            raise HTTPException(status_code=400, detail="not JSON") from None
        if not isinstance(event, dict):
            raise HTTPException(status_code=400, detail="a decision is a JSON object")
        try:
            record = review.append(path, event)
        except MicrometsError as err:
            raise HTTPException(status_code=409 if "frozen" in str(err) else 400, detail=str(err)) from None
        if record["action"] == "sign":  # the signed report: report.html (+ PDF) beside case.json
            from micromets.report import write_report

            write_report(path)
        return JSONResponse({"event": record, "state": review.review_state(path)})

    @app.get("/api/cases/{case_key}/review.csv")
    def api_review_csv(case_key: str) -> Response:
        return Response(review.export_csv(review.review_state(case_dir(case_key))), media_type="text/csv")

    def slide_review(case_key: str, slide_id: str) -> dict:
        """The case's review state, 404 unless ``slide_id`` is one of its slides (for the per-slide exports)."""
        state = review.review_state(case_dir(case_key))
        if slide_id not in state["findings"]:
            raise HTTPException(status_code=404, detail="no such slide in this case")
        return state

    @app.get("/api/cases/{case_key}/review/{slide_id}.geojson")
    def api_review_geojson(case_key: str, slide_id: str) -> JSONResponse:
        return JSONResponse(review.export_geojson(slide_review(case_key, slide_id), slide_id),
                            media_type="application/geo+json")

    @app.get("/api/cases/{case_key}/review/{slide_id}.xml")
    def api_review_asap(case_key: str, slide_id: str) -> Response:
        return Response(review.export_asap_xml(slide_review(case_key, slide_id), slide_id),
                        media_type="application/xml")

    @app.get("/api/cases/{case_key}/report")
    def api_report(case_key: str) -> HTMLResponse:
        from micromets.report import render_report_html

        return HTMLResponse(render_report_html(case_dir(case_key)))

    @app.get("/dzi/{key}/slide.dzi")
    def dzi(key: str) -> Response:
        _entry(catalog, key)
        return Response(tiles.dzi(key), media_type="application/xml")

    @app.get("/dzi/{key}/slide_files/{level:int}/{col:int}_{row:int}.jpeg")
    def tile(key: str, level: int, col: int, row: int) -> Response:
        _entry(catalog, key)
        data = tiles.tile(key, level, col, row)
        if data is None:
            raise HTTPException(status_code=404, detail="tile outside the pyramid")
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app
