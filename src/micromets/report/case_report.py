"""The case report: one self-contained HTML file per patient (pictures embedded) and the same as PDF.

Reads ``DIR/<patient>/case.json`` (schema ``micromets.case/1``) and each slide's ``DIR/<patient>/<slide_id>/
result.json`` (schema ``micromets.slide-result/1``, docs/DESIGN.md), re-reads the slides through OpenSlide for the
pictures, and writes ``report.html`` + ``report.pdf`` beside ``case.json``.

Contents, top to bottom: the patient's pN stage with the rule and the evidence that decided it (node, slide,
H&E / IHC / OSNA) and the synoptic nodal block
(``report.synoptic``); per node its class, largest deposit (mm, maximum Feret diameter), tumour-cell count, number of
deposits, OSNA CK19 copies/µL, a bar plot of deposit sizes against the AJCC 8 boundaries 0.2 mm and 2.0 mm
(ITC <= 0.2 mm < micrometastasis <= 2.0 mm < macrometastasis); per slide a thumbnail with the heatmap and
outlines, a crop of the largest deposit with a scale bar and the lesion table; then the model in plain words (what it
trained on, its held-out result as counts and rates, its known failure modes: :func:`model_sentences`),
software version, date, input file hashes and the research-use statement.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path

import jinja2
from markupsafe import Markup
import numpy as np

from micromets import __version__
from micromets.errors import MicrometsError
from micromets.jsonfile import read_json
from micromets.ood import WARNING as OOD_WARNING
from micromets.report import figures
from micromets.report.pdf import html_to_pdf
from micromets.report.synoptic import synoptic
from micromets.review import decided_slide_results, review_state
from micromets.sizes import format_mm

RESEARCH_USE = (
    "Research use only. micromets is not a medical device and has not been cleared or approved for clinical "
    "diagnosis; every finding must be verified by a pathologist on the glass slide or the full-resolution image."
)

#: Long side of the slide thumbnail (px) and of the deposit crop (px).
THUMB_LONG_PX = 900
CROP_LONG_PX = 560
#: The deposit crop shows at least this much tissue (µm) around the deposit's bounding box.
CROP_MIN_SIDE_UM = 300.0
#: Thumbnail labels: only the largest few lesions are labelled, so labels stay readable.
MAX_THUMB_LABELS = 12

_TEMPLATES = jinja2.Environment(
    loader=jinja2.PackageLoader("micromets", "templates"),
    autoescape=jinja2.select_autoescape(["html", "j2"]),
    undefined=jinja2.StrictUndefined,
)
_TEMPLATES.filters["mm"] = format_mm


def css_string(text) -> Markup:
    """``text`` as a quoted CSS string (the PDF page footer): every character but letters, digits, space and
    ``_-.,()`` is a CSS escape, so no patient id can end the string or the ``<style>`` element."""
    body = "".join(c if c.isalnum() or c in " _-.,()" else f"\\{ord(c):x} " for c in str(text))
    return Markup(f'"{body}"')


_TEMPLATES.filters["css_string"] = css_string


@dataclass
class SlideView:
    """What the report shows for one slide."""

    slide_id: str
    result: dict | None
    error: str | None = None
    thumb_uri: str | None = None
    thumb_mpp: float | None = None
    crop_uri: str | None = None
    crop_caption: str | None = None
    lesions: list[dict] = field(default_factory=list)


@dataclass
class NodeView:
    """What the report shows for one lymph node."""

    node: dict
    slides: list[SlideView]
    n_deposits: int | None  # None: a slide's result could not be read, so the count is unknown
    n_cells: int | None  # tumour cells counted in the node's largest deposit (None: not counted)
    size_plot_svg: str


def _lesion_bbox_l0(lesion: dict) -> tuple[float, float, float, float]:
    pts = np.concatenate([np.asarray(ring, dtype=np.float64).reshape(-1, 2) for ring in lesion["l0_outline"]])
    return pts[:, 0].min(), pts[:, 1].min(), pts[:, 0].max(), pts[:, 1].max()


def _outline_items(lesions: list[dict], n_labels: int) -> list[tuple[list, str, str]]:
    by_size = sorted(lesions, key=lambda les: -les["diameter_mm"])
    labelled = {les["id"] for les in by_size[:n_labels]}
    return [(les["l0_outline"], les["class"], f"#{les['id']}" if les["id"] in labelled else "") for les in lesions]


def _slide_pictures(view: SlideView, slide_dir: Path) -> None:
    """Fill the thumbnail (heatmap + outlines + scale bar) and the largest-deposit crop of one slide."""
    from micromets.slide import open_slide

    result = view.result
    l0_mpp = float(result["l0_mpp"])
    hm = result["heatmap"]
    h_prob = np.load(slide_dir / hm["file"])
    lesions = result["lesions"]
    with open_slide(result["path"], mpp=l0_mpp) as slide:
        long_um = max(slide.l0_width, slide.l0_height) * l0_mpp
        thumb, thumb_mpp = slide.thumbnail(long_um / THUMB_LONG_PX)
        thumb = figures.overlay_heatmap(thumb, thumb_mpp, h_prob, float(hm["cell_um"]), hm["l0_origin"], l0_mpp)
        thumb = figures.draw_outlines(thumb, _outline_items(lesions, MAX_THUMB_LABELS), thumb_mpp, l0_mpp)
        thumb, _ = figures.draw_scale_bar(thumb, thumb_mpp)
        view.thumb_uri, view.thumb_mpp = figures.jpeg_data_uri(thumb), thumb_mpp
        if not lesions:
            return
        largest = max(lesions, key=lambda les: les["diameter_mm"])
        x0, y0, x1, y1 = _lesion_bbox_l0(largest)
        side_l0 = max(x1 - x0, y1 - y0, CROP_MIN_SIDE_UM / l0_mpp) * 1.6
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        l0_x = int(np.clip(cx - side_l0 / 2, 0, max(0, slide.l0_width - side_l0)))
        l0_y = int(np.clip(cy - side_l0 / 2, 0, max(0, slide.l0_height - side_l0)))
        l0_w, l0_h = int(min(side_l0, slide.l0_width)), int(min(side_l0, slide.l0_height))
        crop_mpp = max(l0_mpp, max(l0_w, l0_h) * l0_mpp / CROP_LONG_PX)
        crop = slide.read_at_mpp(l0_x, l0_y, l0_w, l0_h, crop_mpp)
    crop = figures.draw_outlines(crop, _outline_items(lesions, len(lesions)), crop_mpp, l0_mpp, (l0_x, l0_y))
    crop, bar_um = figures.draw_scale_bar(crop, crop_mpp)
    view.crop_uri = figures.jpeg_data_uri(crop, quality=90)
    view.crop_caption = (
        f"Largest deposit #{largest['id']} ({largest['class']}, {format_mm(largest['diameter_mm'])}); "
        f"{crop_mpp:.2f} µm/px, scale bar {figures.format_length_um(bar_um)}"
    )


def _slide_view(patient_dir: Path, slide_id: str) -> SlideView:
    slide_dir = patient_dir / slide_id
    try:
        result = read_json(slide_dir / "result.json", "micromets.slide-result/1")
    except MicrometsError as err:
        return SlideView(slide_id, None, error=str(err))
    view = SlideView(slide_id, result, lesions=sorted(result["lesions"], key=lambda les: -les["diameter_mm"]))
    try:
        _slide_pictures(view, slide_dir)
    except (MicrometsError, OSError, ValueError) as err:
        view.error = f"pictures not drawn: {err}"
    return view


def _node_view(patient_dir: Path, node: dict) -> NodeView:
    slides = [_slide_view(patient_dir, slide_id) for slide_id in node["slides"]]
    lesions = [les for s in slides for les in s.lesions]
    largest = max(lesions, key=lambda les: les["diameter_mm"], default=None)
    deposits = [(f"{s.slide_id} #{les['id']}" if len(slides) > 1 else f"#{les['id']}", les["diameter_mm"],
                 les["class"]) for s in slides for les in s.lesions]
    return NodeView(
        node=node,
        slides=slides,
        n_deposits=None if any(s.result is None for s in slides) else sum(s.result["n_lesions"] for s in slides),
        n_cells=largest.get("n_cells") if largest else None,
        size_plot_svg=figures.size_bars_svg(deposits),
    )


def model_card_of(model: dict | None) -> dict | None:
    """The card of the installed detector a slide result names (its ``model``: name and version), so the report
    describes the model that drew the heatmap; the default's card when none is given or none installed matches
    (a model from a folder of the user's); None when even that cannot be read."""
    from micromets.model import Detector, installed_models

    if model:
        for folder in installed_models().values():
            try:
                card = read_json(folder / "model.json")
            except MicrometsError:
                continue
            if isinstance(card, dict) and (card.get("name"), card.get("version")) == (model.get("name"),
                                                                                       model.get("version")):
                return card
    try:
        return Detector.load().card
    except MicrometsError:
        return None


def model_sentences(card: dict) -> dict[str, str]:
    """The model card in plain words for the report: ``trained_on``, ``held_out`` and ``failure_modes``.

    Read from the card's ``training_data``, ``metrics.held_out`` (AUC, confusion at the threshold) and
    ``known_failure_modes`` (a list of sentences; a card without it says so)."""
    data = card.get("training_data") or []
    trained = "; ".join(d.get("name", "?") for d in data) or "not stated in the model card"
    held = (card.get("metrics") or {}).get("held_out") or {}
    conf = held.get("confusion") or {}
    if conf and all(k in conf for k in ("tp", "fn", "fp", "tn")):
        n_t, n_n = conf["tp"] + conf["fn"], conf["fp"] + conf["tn"]
        held_text = (f"On {n_t} tumour and {n_n} normal patches it never trained on"
                     f"{' (' + held['protocol'] + ')' if held.get('protocol') else ''}, it called "
                     f"{conf['tp']} of {n_t} tumour patches tumour (sensitivity {conf['tp'] / n_t:.0%}) and "
                     f"{conf['fp']} of {n_n} normal patches tumour (specificity {conf['tn'] / n_n:.0%}) at its "
                     f"threshold {held.get('threshold', card.get('threshold', 0.5)):g}")
        if held.get("auc") is not None:
            held_text += f"; area under the ROC curve {held['auc']:.2f} (1.0 is perfect, 0.5 is chance)"
        held_text += "."
    elif held.get("summary"):
        held_text = held_out_by_source_sentence(held)
    else:
        held_text = "The model card gives no held-out result."
    if card.get("verifier"):
        held_text += " " + verifier_sentence(card["verifier"], held.get("ensemble"), held.get("threshold", 0.5),
                                             card.get("confirm_threshold"))
    if isinstance(card.get("context"), dict):
        held_text += " " + context_sentence(card["context"])
    failures = card.get("known_failure_modes") or []
    failure_text = " ".join(failures) if failures else (
        "The model card lists no known failure modes; the README's 'Limits of the bundled model' has what was "
        "measured.")
    return {"trained_on": trained, "held_out": held_text, "failure_modes": failure_text}


def _normal_fields_called(shares: dict[str, float]) -> str:
    """``{source: share of its fields called tumour}`` of the normal sources in words."""
    return "normal fields called tumour: " + ", ".join(f"{k.replace('_', ' ')} {v:.0%}" for k, v in shares.items())


def held_out_by_source_sentence(held: dict) -> str:
    """A per-source held-out report (``bench/tissue_heldout.py``: whole sources held out, mean over seeds) in
    words: the lymph-node patch AUC, the share of annotated carcinoma fields found per carcinoma source, the share of
    fields called tumour per normal source, at the report's threshold."""
    summary, seeds = held["summary"], held.get("seeds") or []
    name = lambda source: source.replace("_", " ")  # noqa: E731
    mean = lambda s, key: s[key]["mean"] if isinstance(s.get(key), dict) else None  # noqa: E731
    parts = []
    auc = mean(summary.get("c16_patches", {}), "auc")
    if auc is not None:
        parts.append(f"on CAMELYON16 lymph-node patches of a slide it never trained on, area under the ROC curve "
                     f"{auc:.2f} (1.0 is perfect, 0.5 is chance)")
    found = [f"{name(k)} {mean(s, 'labelled_window_sensitivity'):.0%}" for k, s in summary.items()
             if mean(s, "labelled_window_sensitivity") is not None]
    if found:
        parts.append("annotated carcinoma fields found: " + ", ".join(found))
    called = {k: mean(s, "share_windows_at_or_above") for k, s in summary.items()
              if mean(s, "share_images_called_tumour") is not None}  # the normal sources' number
    if called:
        parts.append(_normal_fields_called(called))
    return (f"Whole sources held out (never trained on), mean of {len(seeds)} training seeds, at threshold "
            f"{held.get('threshold', 0.5):g}: " + "; ".join(parts) + ".")


def verifier_sentence(verifier: dict, ensemble: dict | None, threshold: float,
                      confirm_threshold: float | None = None) -> str:
    """The card's verifier (:mod:`micromets.train.ensemble`) in words: the threshold its average must reach (the
    card's ``confirm_threshold``) and its own held-out numbers (the ``ensemble`` table of
    ``bench/tissue_heldout.py``) where the card has them."""
    members = verifier.get("members") or []
    seeds = [str(m.get("seed")) for m in members if m.get("seed") is not None]
    text = (f"Every lesion it calls is confirmed again by the average of {len(members)} models of the same recipe"
            f"{' trained with seeds ' + ', '.join(seeds) if seeds else ''}, and counts only if that average "
            + (f"reaches {confirm_threshold:g}" if confirm_threshold is not None else "agrees"))
    table = (ensemble or {}).get("table") or {}
    point = table.get("operating_point") or {}
    if confirm_threshold is not None and point.get("threshold") == confirm_threshold:
        text += (f", the threshold at which tissue of sources it never saw averaged "
                 f"{point['normal_window_share']:.0%} of normal fields called tumour")
    parts = []
    if "c16_patches" in table:
        parts.append(f"CAMELYON16 patch AUC {table['c16_patches']['auc']:.2f}")
    called = {k: v["share_windows_at_or_above"] for k, v in table.items() if "share_images_called_tumour" in v}
    if called:
        parts.append(_normal_fields_called(called))
    if parts:
        text += f"; held out, that average gives (threshold {threshold:g}) " + "; ".join(parts)
    return text + "."


def context_sentence(context: dict) -> str:
    """The card's context model (:func:`micromets.heatmap.context_check`) in words: the field it sees and, where
    the card has them (``held_out``: source → share of fields called tumour or found, with and without it), what
    it changed on tissue of sources never trained on."""
    text = (f"Every field it calls tumour is checked by a second network that sees "
            f"{context.get('field_um', 0):g} µm around the field's centre at {context.get('input_mpp', 0):g} µm/px: "
            "a group of touching fields counts as tumour only if that network calls at least one of them tumour "
            "too")
    held = context.get("held_out") or {}
    changes = [f"{k.replace('_', ' ')}: {v['without']:.1%} → {v['with']:.1%}" for k, v in held.items()
               if isinstance(v, dict) and {"with", "without"} <= set(v)]
    if changes:
        text += f". Held out, without → with it: {'; '.join(changes)}"
    return text + "."


def cell_count_sentence() -> str:
    """How the H&E tumour-cell counts were made and how far to trust them, from the nucleus classifier's card
    (:mod:`micromets.cells`; its ``metrics.hand_counts``, :mod:`micromets.evaluation.hand_counts`)."""
    from micromets.cells import model_card

    try:
        card = model_card()
    except (OSError, ValueError):
        return "The nucleus classifier's card could not be read."
    text = f"H&E cell counts are tumour nuclei found by {card['name']} {card['version']}"
    summary = (((card.get("metrics") or {}).get("hand_counts")) or {}).get("summary")
    if not summary:
        return text + "; its card gives no measured error."
    return (f"{text}, a lower bound: on {summary['tumour_tiles_hand']} tumour nuclei marked by hand on lymph-node "
            f"tissue it never trained on, it counted {summary['recall']:.0%} of them, and "
            f"{summary['precision']:.0%} of what it counted was a marked one; lymph-node tiles without tumour gave "
            f"{summary['lymph_node_tiles_counted_mean']:.1f} tumour nuclei per 62 µm tile. IHC counts are "
            "cytokeratin-positive cells.")


def incomplete(case: dict, nodes: list[NodeView]) -> list[str]:
    """Why the case is provisional, one line each: slides that failed in `micromets case` and slide results that
    cannot be read now (empty: the case is complete)."""
    lines = [f"{f['path']}: {f['error']}" for f in case["failed_slides"]]
    return lines + [s.error for n in nodes for s in n.slides if s.result is None]


def ood_slides(nodes: list[NodeView]) -> list[tuple[str, list[str]]]:
    """The slides flagged out of distribution (:mod:`micromets.ood`), each with the reasons of its flagged
    checks."""
    flagged = [s for n in nodes for s in n.slides
               if s.result is not None and (s.result.get("ood") or {}).get("flagged")]
    return [(s.slide_id, [s.result["ood"][c]["reason"] for c in ("tissue", "stain") if s.result["ood"][c]["flagged"]])
            for s in flagged]


def render_report_html(patient_dir: str | Path) -> str:
    """The report of ``patient_dir`` (the folder holding ``case.json``) as one self-contained HTML string."""
    return _render(Path(patient_dir))[0]


def _render(patient_dir: Path) -> tuple[str, list[str]]:
    """The report's HTML and the reasons it is provisional (see :func:`incomplete`)."""
    case = read_json(patient_dir / "case.json", "micromets.case/1")
    nodes = [_node_view(patient_dir, node) for node in case["nodes"]]
    problems = incomplete(case, nodes)
    results = [s.result for n in nodes for s in n.slides if s.result is not None]
    threshold = results[0]["threshold"] if results else None
    card = model_card_of(results[0].get("model") if results else None)
    try:
        review = review_state(patient_dir)
    except MicrometsError:  # a slide result unreadable now (listed in problems): the rest is still reported
        review = None
    try:
        _, decided_results, _, events = decided_slide_results(patient_dir)
        syn = synoptic(case, decided_results, events)
    except MicrometsError:  # as above: the synoptic block from the slides that can be read, as proposed
        syn = synoptic(case, {s.slide_id: s.result for n in nodes for s in n.slides if s.result is not None}, [])
    template = _TEMPLATES.get_template("report.html.j2")
    return template.render(
        case=case,
        provisional=problems,
        nodes=nodes,
        results=results,
        card=card,
        model_text=model_sentences(card) | {"cell_count": cell_count_sentence()} if card else None,
        software_version=__version__,
        generated=dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        research_use=RESEARCH_USE,
        colour_scale_svg=figures.colour_scale_svg(threshold),
        class_colours={k: figures.hex_colour(v) for k, v in figures.CLASS_COLOURS.items()},
        review=review,
        syn=syn,
        ood_warning=OOD_WARNING,
        ood_slides=ood_slides(nodes),
    ), problems


def write_report(patient_dir: str | Path, pdf: bool = True, problems: list[str] | None = None) -> Path:
    """Write ``report.html`` (and ``report.pdf`` when Chromium is present and ``pdf``) into ``patient_dir``.

    ``patient_dir`` is ``DIR/<patient>`` of ``micromets case`` (it holds ``case.json``). Returns the HTML path.
    Raises :class:`MicrometsError` naming the file when ``case.json`` is missing or not a case file; a slide whose
    result or image cannot be read is reported inside the document instead of stopping it, and the stage is then
    marked provisional. ``problems``, when given, receives why the case is provisional (see :func:`incomplete`).
    """
    patient_dir = Path(patient_dir)
    html, found = _render(patient_dir)
    if problems is not None:
        problems.extend(found)
    html_path = patient_dir / "report.html"
    part = html_path.with_name("report.html.part")
    part.write_text(html, encoding="utf-8")
    part.replace(html_path)
    if pdf:
        html_to_pdf(html_path, patient_dir / "report.pdf")
    return html_path


def find_patient_dirs(results_dir: str | Path) -> list[Path]:
    """Patient folders under ``results_dir``: itself when it holds ``case.json``, else its children that do."""
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise MicrometsError(f"{results_dir}: not a directory")
    if (results_dir / "case.json").is_file():
        return [results_dir]
    found = sorted(p.parent for p in results_dir.glob("*/case.json"))
    if not found:
        raise MicrometsError(f"{results_dir}: no case.json here or in its sub-folders (run `micromets case` first)")
    return found
