"""Browser viewer of micromets results: FastAPI back end (Deep Zoom tiles from OpenSlide, heatmap layer,
lesion GeoJSON) and an OpenSeadragon front end. Start it with ``micromets view RESULTS_DIR``."""

from micromets.viewer.app import create_app

__all__ = ["create_app"]
