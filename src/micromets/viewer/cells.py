"""The nuclei of one H&E deposit as GeoJSON points, for the viewer's cell layer.

The cells are found again on request, exactly as ``micromets analyze`` counts them (:mod:`micromets.cells` on the
lesion's bounding box read at ``analyze.CELL_COUNT_MPP`` µm/px, counted inside the rasterised outline), so that
their number adds up to the lesion's ``n_cells``. Each labelled nucleus becomes a Point at its centroid in level-0
pixels with ``nuclei`` = 1, or ``round(area / TYPICAL_NUCLEUS_UM2)`` for a clump the watershed did not split;
debris (< ``MIN_NUCLEUS_UM2``) is left out. Deposits larger than ``analyze.CELL_COUNT_MAX_MM`` are not counted,
as in ``analyze`` (above 0.2 mm the size alone decides the class); an empty collection says so.
"""

from __future__ import annotations

import numpy as np
from skimage.draw import polygon as draw_polygon
from skimage.measure import regionprops

from micromets import cells
from micromets.analyze import CELL_COUNT_MAX_MM, CELL_COUNT_MPP
from micromets.slide import open_slide


def lesion_cells_geojson(slide_path: str, l0_mpp: float, lesion: dict) -> dict:
    """Nuclei inside ``lesion`` (a result.json lesion record) of the H&E slide at ``slide_path``."""
    base = {"type": "FeatureCollection", "properties": {"lesion_id": lesion["id"], "coordinates": "level-0 pixels",
                                                         "count_mpp": CELL_COUNT_MPP}}
    if lesion["diameter_mm"] > CELL_COUNT_MAX_MM:
        return base | {"features": [], "properties": base["properties"] | {
            "not_counted": f"deposit larger than {CELL_COUNT_MAX_MM:g} mm: its size alone decides its class"}}
    rings = [np.asarray(ring, dtype=np.float64) for ring in lesion["l0_outline"]]
    pts = np.concatenate(rings)
    x0, y0 = np.round(pts.min(axis=0)).astype(int)
    x1, y1 = np.round(pts.max(axis=0)).astype(int)
    with open_slide(slide_path, mpp=l0_mpp) as slide:
        rgb = slide.read_at_mpp(x0, y0, max(1, x1 - x0), max(1, y1 - y0), CELL_COUNT_MPP)
    scale = l0_mpp / CELL_COUNT_MPP
    mask = np.zeros(rgb.shape[:2], bool)
    for ring in rings:
        rr, cc = draw_polygon((ring[:, 1] - y0) * scale, (ring[:, 0] - x0) * scale, mask.shape)
        mask[rr, cc] = True
    labels = cells.nuclei_labels(rgb, CELL_COUNT_MPP, mask)
    um2_per_px = CELL_COUNT_MPP**2
    features = []
    for region in regionprops(labels):
        area_um2 = region.area * um2_per_px
        if area_um2 < cells.MIN_NUCLEUS_UM2:
            continue
        nuclei = 1 if area_um2 <= cells.MAX_NUCLEUS_UM2 else int(round(area_um2 / cells.TYPICAL_NUCLEUS_UM2))
        r, c = region.centroid
        features.append({"type": "Feature", "geometry": {"type": "Point", "coordinates": [
            round(x0 + (c + 0.5) / scale, 1), round(y0 + (r + 0.5) / scale, 1)]},
            "properties": {"objectType": "detection", "classification": {"name": "Nucleus"},  # QuPath detections
                           "nuclei": nuclei, "area_um2": round(area_um2, 1)}})
    return base | {"features": features,
                   "properties": base["properties"] | {"n_cells": sum(f["properties"]["nuclei"] for f in features)}}
