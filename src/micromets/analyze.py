"""The one-slide job: slide → tissue → (H&E heatmap | IHC cells) → lesions → measurements → node class.

:func:`analyze_slide` writes ``out_dir/<slide_id>/`` (or the folder it is given, see :mod:`micromets.folders`)
with ``result.json``, ``heatmap.npy``, ``heatmap.tif`` (the heatmap as a pyramidal TIFF aligned to the slide,
`micromets.overlay`), ``heatmap.png`` and ``lesions.geojson`` (schemas in docs/DESIGN.md) and returns the result
dict. The folder appears whole or not at all: it is written under a temporary name and renamed into place.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import numpy as np
import shapely
from PIL import Image

from micromets import __version__, normalise
from micromets.errors import MicrometsError
from micromets.annotations import geojson_dict, write_asap_xml
from micromets.heatmap import Heatmap
from micromets.lesions import drop_specks, heatmap_outlines_l0, max_value_inside, top_cells_inside
from micromets.measure import DEFAULT_GAP_UM, LesionMeasure, measure_lesion, measure_lesions
from micromets.overlay import write_heatmap_tiff
from micromets.rules import NODE_CLASSES
from micromets.rules.ajcc8 import node_class
from micromets.slide import Slide, open_slide
from micromets.tissue import TissueMask, tissue_mask

SCHEMA = "micromets.slide-result/1"
#: Below this much tissue (mm²) a slide is reported as holding no tissue.
MIN_TISSUE_MM2 = 0.01
#: Detector modes: ``thorough`` runs the fine model over all tissue; ``fast`` screens all tissue with the coarse
#: model first and runs the fine model only near its candidates (can miss ITC, see micromets.heatmap).
MODES = ("thorough", "fast")
#: Resolution at which tumour nuclei are counted inside H&E lesions (µm/px).
CELL_COUNT_MPP = 0.5
#: A candidate lesion is confirmed by re-scoring this many of its highest cells (``heatmap.confirmation_scores``).
CONFIRM_TOP_CELLS = 3
#: Cells are counted in lesions up to this size (mm). The count decides the class only at <= 0.2 mm (AJCC 8:
#: > 200 cells makes a micrometastasis); up to 0.5 mm it is reported for the reader; larger lesions get None.
CELL_COUNT_MAX_MM = 0.5
#: Lesions up to ``CELL_COUNT_MAX_MM`` are outlined again from windows at a finer stride than the heatmap's one
#: window per cell (:func:`refined_outline`): 1/``REFINE_STEPS`` of the lesion's diameter, at least
#: ``REFINE_STRIDE_UM`` (µm; 16 px at 0.5 µm/px): an edge placed to within 5 % of the size, at a cost that does not
#: grow with it (about 30 x 30 windows a lesion; 8 µm for all of them cost 1.8 s for a 0.4 mm lesion).
REFINE_STRIDE_UM, REFINE_STEPS = 8.0, 20
#: Surroundings read with a deposit for its cell count (µm): the classifier's field is 16 µm.
CELL_CONTEXT_UM = 20.0
#: An iso-line outline less than this across (maximum Feret diameter, µm; about one tumour-cell nucleus) is no
#: deposit: it is the iso-line closing round a lone heatmap cell that barely reaches the threshold (demo node 3: a
#: cell at 0.5007 gave a 0.2 µm "candidate" of area 0). Such outlines are dropped before lesions are grouped.
MIN_OUTLINE_UM = 10.0


#: One background thread hashes slide files while they are analysed.
_HASHING = ThreadPoolExecutor(1, thread_name_prefix="micromets-sha256")


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    """SHA-256 of a file (of the main file for multi-file formats)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


#: a stain-sample patch with at least this share of ink pixels ranks last (:func:`stain_sample`)
STAIN_SAMPLE_INK_MAX = 0.01


def stain_sample(slide: Slide, tissue: TissueMask, sample_mpp: float, patch_px: int, n_patches: int = 32,
                 seed: int = 0, draw: int = 4) -> np.ndarray:
    """The ``n_patches`` most haematoxylin-rich of ``draw * n_patches`` tissue patches read at ``sample_mpp``
    (a fixed random draw over the slide), as (N, patch_px, patch_px, 3): the sample the slide's stain vectors are
    estimated from, at the resolution the detector sees.

    Stain vectors estimated from a low-resolution thumbnail are wrong: at 8 µm/px haematoxylin and eosin blend into
    one colour, and the estimated directions nearly coincide. Keeping the cellular patches (ranked by mean
    haematoxylin concentration in the reference basis) matches the tissue the detectors' per-slide estimates were
    trained on (lymph-node parenchyma and tumour) and keeps stroma, capsule and fat from deciding the extreme
    angles of the Macenko estimate: on a phantom node lined by a 30 µm fibrous-stroma capsule, a plain random
    sample turned the eosin vector by ~4° and its 0.7 mm metastasis fell from 53 to 7 heatmap cells ≥ 0.5;
    with this sample it keeps 62. Patches touched by ink or black pigment (>= 1 % of their pixels,
    :func:`micromets.normalise.ink_fraction`; clean H&E holds <= 0.1 %) rank last: ink is darker than any nucleus,
    and the dark, JPEG-fringed pixels around it turn the haematoxylin vector (on demo node 3 with a square of its
    cortex inked, by 4-6°).
    """
    from micromets.stain import dye_amount
    from micromets.tiles import tile_grid

    grid = tile_grid(slide, tissue, patch_px * sample_mpp, min_tissue_fraction=0.5)
    cells = np.argwhere(grid.h_tissue)
    if len(cells) == 0:
        cells = np.argwhere(tile_grid(slide, tissue, patch_px * sample_mpp).h_tissue)
    chosen = np.random.default_rng(seed).permutation(len(cells))[:draw * n_patches]
    l0_cell = grid.l0_cell
    patches = np.stack([slide.read_at_mpp(round(c * l0_cell), round(r * l0_cell), math.ceil(l0_cell),
                                          math.ceil(l0_cell), sample_mpp)[:patch_px, :patch_px]
                        for r, c in cells[chosen]])
    haematoxylin = dye_amount(patches, normalise.complete_basis(normalise.REFERENCE_HE), 0).mean(axis=(1, 2))
    haematoxylin[normalise.ink_fraction(patches) >= STAIN_SAMPLE_INK_MAX] = -np.inf
    return patches[np.sort(np.argsort(-haematoxylin, kind="stable")[:n_patches])]


def outline_rings_l0(geometry_l0) -> list[list[list[float]]]:
    """A lesion's outline as recorded in ``result.json`` (``l0_outline``): the exterior ring of each part, level-0
    pixels rounded to 0.1 px. Cells are counted inside exactly these rings, so a recount from the record (the viewer)
    finds the same cells."""
    return [np.round(np.asarray(part.exterior.coords), 1).tolist() for part in shapely.get_parts(geometry_l0)]


def deposit_tumour_nuclei(slide: Slide, rings_l0: list) -> np.ndarray:
    """Level-0 (x, y) centres of the tumour nuclei inside an H&E deposit's outline (:func:`outline_rings_l0`;
    :mod:`micromets.cells`): its bounding box, with ``CELL_CONTEXT_UM`` of surroundings for the classifier's fields
    and the stain estimate, read at ``CELL_COUNT_MPP``; a nucleus counts when its centre lies inside a ring."""
    from micromets.cells import tumour_nuclei
    from skimage.draw import polygon as draw_polygon

    rings = [np.asarray(ring, dtype=np.float64) for ring in rings_l0]
    points = np.concatenate(rings)
    margin_l0 = CELL_CONTEXT_UM / slide.l0_mpp
    x0, y0 = np.floor(points.min(axis=0) - margin_l0).astype(int)
    x1, y1 = np.ceil(points.max(axis=0) + margin_l0).astype(int)
    x0, y0, x1, y1 = max(0, x0), max(0, y0), min(slide.l0_width, x1), min(slide.l0_height, y1)
    rgb = slide.read_at_mpp(x0, y0, max(1, x1 - x0), max(1, y1 - y0), CELL_COUNT_MPP)
    scale = slide.l0_mpp / CELL_COUNT_MPP
    mask = np.zeros(rgb.shape[:2], bool)
    for ring in rings:
        rr, cc = draw_polygon((ring[:, 1] - y0) * scale, (ring[:, 0] - x0) * scale, mask.shape)
        mask[rr, cc] = True
    found = tumour_nuclei(rgb, CELL_COUNT_MPP, mask)
    return (found.xy_px + 0.5) / scale + [x0, y0]


def _nuclei_model_info() -> dict:
    from micromets.cells import model_card

    card = model_card()
    return {"name": card["name"], "version": card["version"]}


def _lesion_records(measures: list[LesionMeasure], max_prob: np.ndarray, n_cells: list[int | None],
                    confirmed: np.ndarray | None = None, first_id: int = 1) -> list[dict]:
    """result.json records of ``measures``, numbered from ``first_id`` (ids are unique per slide: the unconfirmed
    candidates are numbered after the lesions)."""
    records = []
    for k, (m, p, cells) in enumerate(zip(measures, max_prob, n_cells)):
        i = first_id + k
        outline = outline_rings_l0(m.geometry_l0)
        records.append({
            "id": i, "l0_outline": outline, "diameter_mm": round(m.diameter_mm, 6), "area_mm2": round(m.area_mm2, 5),
            "ellipse_major_mm": round(m.ellipse_major_mm, 4), "max_probability": round(float(p), 4),
            **({} if confirmed is None else {"confirmed_probability": round(float(confirmed[k]), 4)}),
            "n_cells": cells, "n_deposits": m.n_members, "repaired": m.repaired,
            "class": node_class(m.diameter_mm, cells),
        })
    return records


def lesion_thresholds(card: dict, threshold: float | None = None) -> tuple[float, float, float]:
    """The (extent, seed, confirmation) thresholds of a detector's lesions: ``threshold`` (default: the card's,
    else 0.5), the card's ``seed_threshold`` (never below the extent one) and its ``confirm_threshold`` (default:
    the seed threshold; 0 = no confirmation). See :func:`analyze_slide`."""
    threshold = float(card.get("threshold", 0.5) if threshold is None else threshold)
    seed = max(threshold, float(card.get("seed_threshold", threshold)))
    return threshold, seed, float(card.get("confirm_threshold", seed))


def confirmation(slide: Slide, detector, heatmap: Heatmap, measures: list[LesionMeasure], verify_from: float,
                 top_cells: int = CONFIRM_TOP_CELLS, readers: int = 2) -> np.ndarray:
    """Each lesion's confirmation score: the highest, over the ``top_cells`` highest heatmap cells inside it, of
    the mean probability of the 9 half-cell-shifted windows (:func:`micromets.heatmap.confirmation_scores`).
    Where the detector has a verifier (:attr:`micromets.model.Detector.verifier`, the shipped default's seed
    ensemble), a lesion whose score reaches ``verify_from`` (the heatmap threshold: below it the detector does not
    call the lesion's best fields tumour at all) is scored again, the same way, by the verifier, and that is its
    score: a cascade, so the verifier's extra networks run only on the few lesions the detector still calls.

    A lesion is the group of deposits within the gap, so a macrometastasis that the heatmap breaks into pieces
    is confirmed (or not) as a whole by its strongest cells, and keeps all of its pieces."""
    from micromets.heatmap import confirmation_scores

    geoms = [m.geometry_l0 for m in measures]
    cells = top_cells_inside(heatmap, geoms, top_cells)
    scores = max_value_inside(confirmation_scores(slide, detector, heatmap, cells, readers=readers), geoms)
    passed = np.flatnonzero(scores >= verify_from)
    if detector.verifier is not None and len(passed):
        kept = [geoms[k] for k in passed]
        again = confirmation_scores(slide, detector.verifier, heatmap, top_cells_inside(heatmap, kept, top_cells),
                                    readers=readers)
        scores[passed] = max_value_inside(again, kept)
    return scores


def refined_outline(slide: Slide, detector, heatmap: Heatmap, lesion: LesionMeasure, threshold: float,
                    stride_um: float | None = None) -> LesionMeasure:
    """A small lesion outlined again on its pixels: the iso-line at ``threshold`` of the detector re-run with
    windows every ``stride_um`` (:func:`micromets.heatmap.local_heatmap`; None: :data:`REFINE_STEPS` steps across
    the lesion, at least :data:`REFINE_STRIDE_UM`) over the lesion's box and one heatmap cell
    around it, keeping the parts that touch the heatmap's outline (measured as one lesion). The heatmap places an
    edge only to within a cell (48 µm for the bundled model, a third of an ITC cluster): its iso-line cuts off
    tumour cells and takes in lymphocytes (issue 15, demo node 3). Returns ``lesion`` unchanged where the fine
    iso-line finds nothing there."""
    from micromets.heatmap import local_heatmap

    margin_l0 = heatmap.l0_cell
    if stride_um is None:
        stride_um = max(REFINE_STRIDE_UM, lesion.diameter_mm * 1000.0 / REFINE_STEPS)
    x0, y0, x1, y1 = lesion.geometry_l0.bounds
    box = (max(0.0, x0 - margin_l0), max(0.0, y0 - margin_l0),
           min(float(slide.l0_width), x1 + margin_l0), min(float(slide.l0_height), y1 + margin_l0))
    # the fine grid is anchored on the heatmap's, so its windows do not follow where the coarse iso-line fell
    fine = local_heatmap(slide, detector, box, stride_um, l0_anchor=heatmap.l0_origin)
    parts = [o for o in drop_specks(heatmap_outlines_l0(fine, threshold), slide.l0_mpp, MIN_OUTLINE_UM)
             if o.intersects(lesion.geometry_l0)]
    if not parts:
        return lesion
    return measure_lesion([shapely.union_all(parts)], slide.l0_mpp)


CANDIDATE_CLASS = "Candidate (unconfirmed)"


def _lesions_geojson(measures: list[LesionMeasure], records: list[dict], l0_mpp: float,
                     candidates: list[LesionMeasure] = (), candidate_records: list[dict] = ()) -> dict:
    """QuPath-compatible FeatureCollection (level-0 px; QuPath annotations, objectType "annotation"): the lesions,
    classified by size class, with ``"confirmed": true``, then the candidates that failed the confirmation,
    classified ``Candidate (unconfirmed)``, with ``"confirmed": false``."""
    props = [{**{k: v for k, v in rec.items() if k != "l0_outline"}, "l0_mpp": l0_mpp, "confirmed": ok,
              "classification": {"name": f"Tumour ({rec['class']})" if ok else CANDIDATE_CLASS}}
             for recs, ok in ((records, True), (candidate_records, False)) for rec in recs]
    return geojson_dict([m.geometry_l0 for m in [*measures, *candidates]], props)


def _lesions_asap_xml(path: Path, collection: dict) -> None:
    """The lesions of ``collection`` (:func:`_lesions_geojson`) as ASAP XML: group ``Tumor`` for the confirmed
    lesions, ``Candidate`` for the unconfirmed ones, named ``lesion <id>`` and ``candidate <id>``."""
    features = collection["features"]
    write_asap_xml(path, [shapely.geometry.shape(f["geometry"]) for f in features],
                   names=[f"{'lesion' if f['properties']['confirmed'] else 'candidate'} {f['properties']['id']}"
                          for f in features],
                   groups=["Tumor" if f["properties"]["confirmed"] else "Candidate" for f in features])


def _cells_geojson(cells_l0: np.ndarray, classification: str) -> dict:
    """QuPath detections: one Point per counted tumour cell (level-0 px): DAB-positive cells of an IHC slide, tumour
    nuclei of the counted deposits of an H&E slide (those up to ``CELL_COUNT_MAX_MM``)."""
    features = [{"type": "Feature", "geometry": {"type": "Point", "coordinates": [round(float(x), 1), round(float(y), 1)]},
                 "properties": {"objectType": "detection", "classification": {"name": classification}}}
                for x, y in cells_l0]
    return {"type": "FeatureCollection", "features": features}


#: Long side of ``heatmap.png`` (px): big enough to see, bounded whatever the slide's size.
OVERLAY_LONG_PX = 1000


def render_overlay(slide: Slide, heatmap: Heatmap, records: list[dict], threshold: float | None) -> Image.Image:
    """``heatmap.png``: the slide at ≤ ``OVERLAY_LONG_PX`` px on its long side with the heatmap and the lesion
    outlines in the report's and viewer's colours (:mod:`micromets.report.figures`), a scale bar, and a legend
    strip below (colour bar with the ``threshold`` marked, class colours)."""
    from micromets.report import figures

    long_um = max(slide.l0_width, slide.l0_height) * slide.l0_mpp
    k = max(1, math.ceil(long_um / OVERLAY_LONG_PX / slide.l0_mpp))  # level-0 px per picture px
    rgb, img_mpp = slide.thumbnail(k * slide.l0_mpp)
    rgb = figures.overlay_heatmap(rgb, img_mpp, heatmap.h_prob, heatmap.cell_um, heatmap.l0_origin, slide.l0_mpp)
    rgb = figures.draw_outlines(rgb, [(r["l0_outline"], r["class"], f"#{r['id']}") for r in records], img_mpp,
                                slide.l0_mpp)
    rgb, _ = figures.draw_scale_bar(rgb, img_mpp)
    legend = figures.legend_strip(rgb.shape[1], threshold)
    return Image.fromarray(np.concatenate([rgb, legend], axis=0))


def _write_outputs(out_dir: Path, slide_id: str, result: dict, heatmap: Heatmap, overlay: Image.Image,
                   geojson: dict[str, dict]) -> Path:
    """Write the slide folder under a temporary name, then rename it into place (all or nothing)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    final = out_dir / slide_id
    tmp = Path(tempfile.mkdtemp(prefix=f".{slide_id}.", suffix=".partial", dir=out_dir))
    try:
        tmp.chmod(0o755)  # mkdtemp makes it private; results are for the user's group and the viewer too
        np.save(tmp / "heatmap.npy", heatmap.h_prob)
        result["heatmap"]["tiff"] = write_heatmap_tiff(tmp / "heatmap.tif", heatmap, result["l0_width"],
                                                       result["l0_height"])
        overlay.save(tmp / "heatmap.png")
        for name, collection in geojson.items():
            (tmp / name).write_text(json.dumps(collection))
        _lesions_asap_xml(tmp / "lesions.xml", geojson["lesions.geojson"])
        (tmp / "result.json").write_text(json.dumps(result, indent=1))
        if final.exists():
            trash = Path(tempfile.mkdtemp(prefix=f".{slide_id}.", suffix=".old", dir=out_dir))
            os.replace(final, trash / slide_id)
            os.replace(tmp, final)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        raise MicrometsError(f"{out_dir}: cannot write results ({err.strerror or err})") from err
    return final


def analyze_slide(path: str | Path, out_dir: str | Path, mpp: float | None = None, mode: str = "thorough",
                  detector=None, stain: str | None = None, threshold: float | None = None,
                  gap_um: float = DEFAULT_GAP_UM, progress: Callable[[int, int], None] | None = None,
                  readers: int = 2, screen=None, confirm_threshold: float | None = None,
                  folder: str | None = None) -> dict:
    """Analyse one slide and write its results folder ``out_dir/<folder>`` (default ``<slide_id>``; commands name
    it by :func:`micromets.folders.plan_folders`); returns the result dict (``result.json``).

    ``mode`` is ``thorough`` (fine model over all tissue) or ``fast`` (coarse ``screen`` model — default the
    shipped ``models/coarse`` — over all tissue at its card's ``screen_threshold``, then the fine model on its
    candidates and, grown cell by cell, on the whole of every region reaching ``threshold``: those lesions come
    out as in thorough mode; a deposit the screen misses is lost, so fast mode can miss ITC; see
    :func:`micromets.heatmap.compute_heatmap_fast`). IHC slides are analysed the same way in both modes.
    ``mpp`` overrides the slide's level-0 µm/px; ``stain`` forces ``"he"`` or ``"ihc"`` (default: detected);
    ``threshold`` overrides the model card's operating threshold; ``gap_um`` is the lesion grouping gap;
    ``readers`` is the number of tile-reading threads that run ahead of inference.

    In both modes a positive region of the heatmap (cells at ``threshold`` or above) stays positive only if the
    detector's context model, where the card has one, calls the larger field around one of its cells tumour too
    (:func:`micromets.heatmap.context_check`), and a cell on the edge of a positive region, or alone, stays there
    only if the mean of its 9 half-cell-shifted windows reaches it too
    (:func:`micromets.heatmap.rescore_edge_cells`).
    Lesions are found with hysteresis: an outline is the iso-line of the heatmap at ``threshold`` (its extent),
    and it is kept only when at least one cell inside it reaches the card's ``seed_threshold`` (default: the same
    value). A low extent threshold measures deposits fully; a high seed threshold keeps lone, weakly scored
    cells from becoming lesions. The outlines are grouped into lesions (``gap_um``), and a lesion must then be
    confirmed (:func:`confirmation`): one of its 3 highest cells, re-scored as the mean of the 9 windows shifted
    by half a cell, must reach ``confirm_threshold`` (default: the card's ``confirm_threshold``, else the seed
    threshold; 0 turns the confirmation off). Each lesion's ``confirmed_probability`` is recorded; the lesions
    that fail are listed in ``unconfirmed_lesions`` (for review; they count for no class). A confirmed lesion up
    to ``CELL_COUNT_MAX_MM`` is then outlined again on its pixels (:func:`refined_outline`) and its tumour nuclei
    are counted inside that outline (:func:`deposit_tumour_nuclei`).
    """
    if mode not in MODES:
        raise MicrometsError(f"unknown mode {mode!r} (expected {' or '.join(MODES)})")
    if stain not in (None, "he", "ihc"):
        raise MicrometsError(f"unknown stain {stain!r} (expected he or ihc)")
    start = time.perf_counter()
    path = Path(path)
    with open_slide(path, mpp) as slide:
        # the file's SHA-256 (≈ 1 s per GB) is computed beside the analysis; hashlib releases the GIL
        sha256 = _HASHING.submit(file_sha256, slide.path) if slide.path.is_file() else None  # a DICOM folder: none
        tissue = tissue_mask(slide)
        if tissue.area_mm2 < MIN_TISSUE_MM2:
            raise MicrometsError(f"{path}: no tissue found (tissue area {tissue.area_mm2:.3f} mm²)")
        if stain is None:
            from micromets.stain import detect_stain

            stain, stain_reason = detect_stain(tissue.rgb, tissue.mask)
        else:
            stain_reason = "set by the user"
        timing = {}
        if stain == "he":
            from micromets.heatmap import compute_heatmap, compute_heatmap_fast
            from micromets.model import Detector, coarse_model_dir
            from micromets.ood import ood_checks

            detector = detector or Detector.load()
            sample = stain_sample(slide, tissue, detector.input_mpp, detector.patch_px)
            detector.set_stain_reference(sample)
            ood = ood_checks(sample, detector.input_mpp, detector.target_he)
            threshold, seed_threshold, card_confirm = lesion_thresholds(detector.card, threshold)
            confirm_threshold = card_confirm if confirm_threshold is None else confirm_threshold
            if mode == "fast":
                screen = screen or Detector.load(coarse_model_dir(), threads=detector.threads)
                screen.set_stain_reference(stain_sample(slide, tissue, screen.input_mpp, screen.patch_px))
                screen_threshold = float(screen.card.get("screen_threshold", 0.5))
                heatmap, heat_timing = compute_heatmap_fast(slide, tissue, detector, screen, screen_threshold,
                                                            threshold, readers=readers, progress=progress,
                                                            rescore_from=threshold)
                timing.update(screen=round(heat_timing.screen_s, 3), n_screen_patches=heat_timing.n_screen_patches)
            else:
                heatmap, heat_timing = compute_heatmap(slide, tissue, detector, readers=readers, progress=progress,
                                                       rescore_from=threshold)
            timing.update(read=round(heat_timing.read_s, 3), read_wait=round(heat_timing.read_wait_s, 3),
                          inference=round(heat_timing.inference_s, 3), n_patches=heat_timing.n_patches,
                          rescore=round(heat_timing.rescore_s, 3), n_rescored=heat_timing.n_rescored,
                          context=round(heat_timing.context_s, 3), n_context=heat_timing.n_context)
            inked_mm2 = round(heat_timing.n_inked * (heatmap.cell_um / 1000) ** 2, 4)
            post_start = time.perf_counter()
            outlines = drop_specks(heatmap_outlines_l0(heatmap, threshold), slide.l0_mpp, MIN_OUTLINE_UM)
            seeded = max_value_inside(heatmap, outlines) >= seed_threshold
            measures = measure_lesions([o for o, keep in zip(outlines, seeded) if keep], slide.l0_mpp, gap_um)
            confirmed, unconfirmed, dropped = None, [], []
            if confirm_threshold > 0 and measures:
                scores = confirmation(slide, detector, heatmap, measures, threshold, readers=readers)
                keep = scores >= confirm_threshold
                dropped = [m for m, k in zip(measures, keep) if not k]
                unconfirmed = _lesion_records(dropped, max_value_inside(heatmap, [m.geometry_l0 for m in dropped]),
                                              [None] * len(dropped), scores[~keep], first_id=int(keep.sum()) + 1)
                measures, confirmed = [m for m, k in zip(measures, keep) if k], scores[keep]
            max_prob = max_value_inside(heatmap, [m.geometry_l0 for m in measures])  # before refinement
            measures = [refined_outline(slide, detector, heatmap, m, threshold)
                        if m.diameter_mm <= CELL_COUNT_MAX_MM else m for m in measures]
            order = np.argsort([-m.diameter_mm for m in measures], kind="stable")  # largest first, as measured
            measures, max_prob = [measures[i] for i in order], max_prob[order]
            confirmed = None if confirmed is None else confirmed[order]
            cells_he = [deposit_tumour_nuclei(slide, outline_rings_l0(m.geometry_l0))
                        if m.diameter_mm <= CELL_COUNT_MAX_MM else None for m in measures]
            n_cells = [None if c is None else len(c) for c in cells_he]
            model_info = {"name": detector.name, "version": detector.version, "nuclei": _nuclei_model_info()}
            if detector.verifier is not None:
                model_info["verifier"] = {"members": [{k: m.get(k) for k in ("name", "version", "seed")}
                                                      for m in detector.card["verifier"].get("members", [])]}
            if detector.context is not None:
                model_info["context"] = {"name": detector.context.name, "version": detector.context.version,
                                         "field_um": detector.context.cell_um}
            if mode == "fast":
                model_info["screen"] = {"name": screen.name, "version": screen.version, "threshold": screen_threshold}
            counted = [c for c in cells_he if c is not None]
            cells_xy = np.concatenate(counted) if counted else np.zeros((0, 2))
            cells_class = "Tumour nucleus"
        else:
            from micromets.ihc import analyze_ihc

            findings = analyze_ihc(slide, tissue)
            heatmap = findings.heatmap
            post_start = time.perf_counter()
            threshold = seed_threshold = confirm_threshold = confirmed = None
            unconfirmed, dropped = [], []
            measures = measure_lesions([c["geometry_l0"] for c in findings.clusters], slide.l0_mpp, gap_um)
            cells_xy = findings.cells_l0
            cells_class = "Cytokeratin+ cell"
            n_cells = [int(shapely.contains_xy(m.geometry_l0, cells_xy[:, 0], cells_xy[:, 1]).sum())
                       if len(cells_xy) else 0 for m in measures]
            model_info = {"name": "ihc-dab-cells", "version": __version__}
            max_prob = max_value_inside(heatmap, [m.geometry_l0 for m in measures])
            ood = None  # the checks are measured on H&E only (micromets.ood)
            inked_mm2 = None  # no network: the DAB count reads every tissue cell
        records = _lesion_records(measures, max_prob, n_cells, confirmed)
        largest = max((r["diameter_mm"] for r in records), default=None)
        classes = [r["class"] for r in records]
        slide_class = max(classes, key=NODE_CLASSES.index, default="negative")
        timing["post"] = round(time.perf_counter() - post_start, 3)
        timing["total"] = round(time.perf_counter() - start, 3)
        result = {
            "schema": SCHEMA, "slide_id": slide.slide_id, "path": str(slide.path.resolve()),
            "sha256": sha256.result() if sha256 is not None else None,
            "l0_mpp": slide.l0_mpp, "mpp_source": slide.mpp_source,
            "l0_width": slide.l0_width, "l0_height": slide.l0_height,
            "stain": stain, "stain_reason": stain_reason,
            "tissue_area_mm2": round(tissue.area_mm2, 4),
            "inked_mm2": inked_mm2,
            "ood": ood,
            "model": model_info, "mode": mode, "threshold": threshold,
            "seed_threshold": seed_threshold, "confirm_threshold": confirm_threshold, "gap_um": gap_um,
            "heatmap": {"file": "heatmap.npy", "cell_um": heatmap.cell_um, "l0_origin": list(heatmap.l0_origin),
                        "shape": list(heatmap.h_prob.shape)},
            "node_class": slide_class,
            "largest_deposit_mm": largest,
            "n_lesions": len(records),
            "lesions": records,
            "unconfirmed_lesions": unconfirmed,
            "software": {"micromets": __version__},
            "timing_s": timing,
        }
        overlay = render_overlay(slide, heatmap, records, threshold)
        geojson = {"lesions.geojson": _lesions_geojson(measures, records, slide.l0_mpp, dropped, unconfirmed)}
        geojson["cells.geojson"] = _cells_geojson(cells_xy, cells_class)
        result["n_cells_total"] = int(len(cells_xy))
    _write_outputs(Path(out_dir), folder or slide.slide_id, result, heatmap, overlay, geojson)
    return result
