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
  ``GET /api/cases/CASE/review/SLIDE_ID.geojson`` export the decisions (QuPath reads the GeoJSON);
  ``GET /api/cases/CASE/report`` renders the case report with the review. Nothing but ``review.jsonl`` and, at
  sign-out, ``report.html`` / ``report.pdf`` of the case is written; slides are only read.
- ``GET /dzi/KEY/slide.dzi`` and ``GET /dzi/KEY/slide_files/LEVEL/COL_ROW.jpeg`` — Deep Zoom descriptor and tiles.

Unknown keys, tiles outside the pyramid and any path outside ``static/`` answer 404. Handlers are plain
functions, which FastAPI runs in its thread pool, so tile requests are served concurrently.
"""

from __future__ import annotations

import io
import threading
from pathlib import Path

import numpy as np
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from PIL import Image

from micromets import review
from micromets.errors import MicrometsError
from micromets.report.figures import CLASS_COLOURS, heatmap_rgba, prob_colours
from micromets.viewer.catalog import Catalog, SlideEntry, build_catalog, lesions_geojson, slide_summary
from micromets.viewer.cells import lesion_cells_geojson
from micromets.viewer.tiles import TileServer

STATIC_DIR = Path(__file__).parent / "static"
OSD_JS = STATIC_DIR / "vendor" / "openseadragon" / "openseadragon.min.js"
#: The heatmap image is upscaled (nearest neighbour, integer factor <= 8) to at most 4096 px on its long side.
HEATMAP_MAX_UPSCALE = 8
HEATMAP_MAX_PX = 4096


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


def create_app(results_dir: str | Path, tile_server: TileServer | None = None) -> FastAPI:
    """The viewer application for one results directory (scanned once, at creation)."""
    catalog = build_catalog(results_dir)
    tiles = tile_server or TileServer(catalog)
    heatmaps: dict[str, bytes] = {}
    heatmap_lock = threading.Lock()
    cells_cache: dict[tuple[str, int], dict] = {}
    cells_lock = threading.Lock()
    app = FastAPI(title="micromets viewer", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.catalog = catalog
    app.state.tiles = tiles

    @app.get("/")
    def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    @app.get("/api/catalog")
    def api_catalog() -> JSONResponse:
        slides = {k: {"slide_id": e.result.get("slide_id"), "node_class": e.result.get("node_class"),
                      "stain": e.result.get("stain")} for k, e in catalog.slides.items()}
        return JSONResponse({"cases": catalog.cases, "slides": slides, "viewer_ready": OSD_JS.is_file(),
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
        with cells_lock:
            data = cells_cache.get((key, lesion_id))
        if data is None:
            data = lesion_cells_geojson(entry.result["path"], entry.result["l0_mpp"], lesion)
            with cells_lock:
                cells_cache[(key, lesion_id)] = data
        return JSONResponse(data, media_type="application/geo+json")

    @app.get("/api/slides/{key}/heatmap.png")
    def api_heatmap(key: str) -> Response:
        entry = _entry(catalog, key)
        with heatmap_lock:
            data = heatmaps.get(key)
        if data is None:
            hm = entry.result.get("heatmap") or {}
            path = entry.result_dir / hm.get("file", "heatmap.npy")
            if not path.is_file():
                raise HTTPException(status_code=404, detail="no heatmap for this slide")
            rgba = heatmap_rgba(np.load(path))
            # Nearest-neighbour upscaling keeps cells crisp when the browser smooths the layer while zooming.
            k = max(1, min(HEATMAP_MAX_UPSCALE, HEATMAP_MAX_PX // max(rgba.shape[:2])))
            buf = io.BytesIO()
            Image.fromarray(rgba.repeat(k, axis=0).repeat(k, axis=1), mode="RGBA").save(buf, format="PNG")
            data = buf.getvalue()
            with heatmap_lock:
                heatmaps[key] = data
        return Response(data, media_type="image/png", headers={"Cache-Control": "max-age=3600"})

    def case_dir(case_key: str) -> Path:
        path = catalog.case_dirs.get(case_key)
        if path is None:
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

    @app.get("/api/cases/{case_key}/review/{slide_id}.geojson")
    def api_review_geojson(case_key: str, slide_id: str) -> JSONResponse:
        state = review.review_state(case_dir(case_key))
        if slide_id not in state["findings"]:
            raise HTTPException(status_code=404, detail="no such slide in this case")
        return JSONResponse(review.export_geojson(state, slide_id), media_type="application/geo+json")

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
