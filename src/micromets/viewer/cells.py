"""The tumour nuclei of one H&E deposit as GeoJSON points, for the viewer's cell layer.

The nuclei are found again on request, exactly as ``micromets analyze`` counts them
(:func:`micromets.analyze.deposit_tumour_nuclei` inside the recorded ``l0_outline``), so that their number is the
lesion's ``n_cells``. Each is a QuPath detection Point at its centre in level-0 pixels, classified ``Tumour
nucleus``. Deposits larger than
``analyze.CELL_COUNT_MAX_MM`` are not counted, as in ``analyze`` (above 0.2 mm the size alone decides the class);
an empty collection says so.
"""

from __future__ import annotations

from micromets.analyze import CELL_COUNT_MAX_MM, CELL_COUNT_MPP, deposit_tumour_nuclei
from micromets.slide import open_slide


def lesion_cells_geojson(slide_path: str, l0_mpp: float, lesion: dict) -> dict:
    """Tumour nuclei inside ``lesion`` (a result.json lesion record) of the H&E slide at ``slide_path``."""
    base = {"type": "FeatureCollection", "properties": {"lesion_id": lesion["id"], "coordinates": "level-0 pixels",
                                                         "count_mpp": CELL_COUNT_MPP}}
    if lesion["diameter_mm"] > CELL_COUNT_MAX_MM:
        return base | {"features": [], "properties": base["properties"] | {
            "not_counted": f"deposit larger than {CELL_COUNT_MAX_MM:g} mm: its size alone decides its class"}}
    with open_slide(slide_path, mpp=l0_mpp) as slide:
        centres = deposit_tumour_nuclei(slide, lesion["l0_outline"])
    features = [{"type": "Feature", "geometry": {"type": "Point", "coordinates": [round(float(x), 1), round(float(y), 1)]},
                 "properties": {"objectType": "detection", "classification": {"name": "Tumour nucleus"},  # QuPath
                                "nuclei": 1}}
                for x, y in centres]
    return base | {"features": features, "properties": base["properties"] | {"n_cells": len(features)}}
