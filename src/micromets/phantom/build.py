"""Build one phantom slide with its ground truth, and keep the phantom manifest of a folder.

`build_phantom` writes, in `out_dir`:

- `<name>.tiff`: pyramidal tiled JPEG TIFF at `l0_mpp` µm/px (`pyramid.write_pyramid`, OpenSlide generic-tiff);
- `<name>.xml`: lesion outlines as ASAP XML, `<name>.geojson`: the same as QuPath GeoJSON with each lesion's
  class, maximum Feret diameter (mm) and area (mm²) (level-0 px; writers of `micromets.annotations`);
- a row in `manifest.csv` (replacing any earlier row of the same name), columns `MANIFEST_COLUMNS`: name,
  patient and node (optional, to group phantoms into patients), slide file, expected node class (CAMELYON17
  labels), lesion classes and maximum Feret diameters (mm, `;`-separated), size and resolution, seed, tile
  folders. Paths are relative to the manifest's folder.

The capsule is drawn from `CAPSULE_TILES` unless told otherwise: the three fibrous-stroma tiles of Kather et al.
2016 (colorectal cancer H&E, STROMA class, 150 px at 0.495 µm/px, CC BY 4.0) bundled with the package, re-stained
to the normal tiles' H&E (`texture.restain`). With `stroma=True` trabeculae and stroma islands are drawn with
the same tiles. `fat_tiles` (e.g. `FAT_TILES`: the three Kather 2016 ADIPOSE tiles, CC BY 4.0, bundled) fill the
perinodal fat with real adipose tissue instead of drawn adipocytes. The bundled stroma and fat tiles are never
trained on by the default model (`micromets.train.tissue_data.BENCH_RESERVED`), so `micromets bench` tests it on
stroma and fat it has not seen.

The phantom is fully determined by (tile folders, tiles_mpp, lesions, size_mm, l0_mpp, seed, shape, outlines):
rebuilding with the same arguments gives the same pixels and the same ground truth.
"""

from __future__ import annotations

import csv
import os
import re
from pathlib import Path

from micromets.annotations import write_asap_xml, write_geojson
from micromets.errors import MicrometsError
from micromets.phantom.layout import expected_node_class, load_outlines, make_layout, parse_lesions
from micromets.phantom.pyramid import write_pyramid
from micromets.phantom.render import PhantomRenderer
from micromets.phantom.texture import load_tiles, restain

MANIFEST = "manifest.csv"
ASAP_GROUP = "metastases"
MANIFEST_COLUMNS = (
    "name", "patient", "node", "slide_path", "xml_path", "geojson_path", "node_class", "n_lesions", "lesion_classes",
    "lesion_diameters_mm", "l0_mpp", "l0_width", "l0_height", "size_mm", "lesions", "shape", "seed",
    "normal_tiles", "tumour_tiles", "tiles_mpp", "capsule_tiles", "capsule_tiles_mpp", "stroma", "fat_tiles",
)
CAPSULE_TILES = Path(__file__).resolve().parents[1] / "data" / "tiles" / "stroma"
CAPSULE_TILES_MPP = 0.495  # Kather et al. 2016, Sci Rep 6:27988
FAT_TILES = Path(__file__).resolve().parents[1] / "data" / "tiles" / "fat"  # same source and µm/px
#: Largest phantom side (mm): a 3 x 1 inch glass slide is 76 x 26 mm; beyond it a request is a typo, not a slide.
MAX_SIZE_MM = 80.0


def default_name(lesions: str, seed: int) -> str:
    """File stem from the lesion spec and seed, e.g. `phantom_micro1_itc2_s7`."""
    spec = re.sub(r"[^a-z0-9]+", "", lesions.lower().replace(",", "_").replace(":", "").replace("@", "at"))
    return f"phantom_{spec or 'none'}_s{seed}"


def read_phantom_manifest(path: str | Path) -> list[dict]:
    """Rows of a phantom `manifest.csv`, with `slide_path`, `xml_path`, `geojson_path` made absolute."""
    path = Path(path)
    if not path.is_file():
        raise MicrometsError(f"phantom manifest not found: {path}")
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in ("name", "slide_path", "node_class", "lesion_diameters_mm") if c not in
                   (reader.fieldnames or [])]
        if missing:
            raise MicrometsError(f"{path}: not a phantom manifest, missing column(s) {', '.join(missing)}")
        rows = list(reader)
    for row in rows:
        for key in ("slide_path", "xml_path", "geojson_path"):
            if row.get(key):
                row[key] = str((path.parent / row[key]).resolve())
    return rows


def _update_manifest(out_dir: Path, row: dict) -> None:
    path = out_dir / MANIFEST
    rows = []
    if path.is_file():
        with open(path, newline="", encoding="utf-8") as fh:
            rows = [r for r in csv.DictReader(fh) if r.get("name") != row["name"]]
    rows.append(row)
    rows.sort(key=lambda r: r["name"])
    tmp = path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=MANIFEST_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


def write_truth(out_dir: Path, name: str, layout) -> None:
    """`<name>.xml` (ASAP, group `metastases` as in CAMELYON17) and `<name>.geojson` with per-lesion numbers."""
    outlines = [les.outline_l0 for les in layout.lesions]
    mm2_per_px = (layout.l0_mpp / 1000.0) ** 2
    write_asap_xml(out_dir / f"{name}.xml", outlines, names=[f"lesion {les.lesion_id}" for les in layout.lesions],
                   group=ASAP_GROUP)
    properties = [
        {"name": f"lesion {les.lesion_id}", "lesion_id": les.lesion_id, "class": les.size_class,
         "shape": les.shape, "diameter_mm": les.diameter_mm, "area_mm2": les.outline_l0.area * mm2_per_px,
         "l0_mpp": layout.l0_mpp}
        for les in layout.lesions
    ]
    write_geojson(out_dir / f"{name}.geojson", outlines, properties)


def build_phantom(
    out_dir: str | Path,
    normal_tiles: str | Path,
    tumour_tiles: str | Path,
    tiles_mpp: float,
    lesions: str,
    size_mm: tuple[float, float],
    l0_mpp: float = 0.243,
    seed: int = 0,
    name: str | None = None,
    shape: str = "blob",
    polygons: str | Path | None = None,
    jpeg_quality: int = 80,
    patient: str = "",
    node: str = "",
    capsule_tiles: str | Path = CAPSULE_TILES,
    capsule_tiles_mpp: float = CAPSULE_TILES_MPP,
    stroma: bool = False,
    fat_tiles: str | Path | None = None,
) -> dict:
    """Write `<name>.tiff/.xml/.geojson` into `out_dir`, add the manifest row and return it.

    `lesions` is `itc:N,micro:N,macro:N` (each optionally `@DIAMETER_MM`) or `none`; `size_mm` is the slide's
    (width, height) in mm; `shape` is `blob`, `disc` or `camelyon16` (real CAMELYON16 outlines from the
    `polygons` folder, scaled to the drawn diameter). `patient` and `node` (optional) group phantoms into
    patients for staging (`micromets bench` scores the pN stage of such groups). `capsule_tiles` (at
    `capsule_tiles_mpp` µm/px) line the node as its fibrous capsule, re-stained to the normal tiles' H&E, and
    form its trabeculae and stroma islands with `stroma`; `fat_tiles` (same µm/px) texture the perinodal fat.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    name = name or default_name(lesions, seed)
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise MicrometsError(f"phantom name {name!r} may only use letters, digits, '_', '-' and '.'")
    specs = parse_lesions(lesions)
    outlines = load_outlines(polygons) if shape == "camelyon16" and polygons else None
    layout = make_layout(size_mm, l0_mpp, specs, seed, shape, outlines, stroma=stroma)
    normal = load_tiles(normal_tiles, tiles_mpp, l0_mpp)
    tumour = load_tiles(tumour_tiles, tiles_mpp, l0_mpp)
    capsule = restain(load_tiles(capsule_tiles, capsule_tiles_mpp, l0_mpp), like=normal)
    fat = restain(load_tiles(fat_tiles, capsule_tiles_mpp, l0_mpp), like=normal) if fat_tiles else None
    renderer = PhantomRenderer(layout, normal, tumour, capsule, seed, fat)
    node_class = expected_node_class(layout)
    slide_path = out_dir / f"{name}.tiff"
    tmp_path = out_dir / f".{name}.tiff.part"
    try:
        write_pyramid(tmp_path, layout.l0_width, layout.l0_height, l0_mpp, renderer.render_region,
                      jpeg_quality=jpeg_quality,
                      description=f"micromets phantom {name} seed={seed} lesions={lesions} mpp={l0_mpp}")
    except BaseException:  # interrupted or failed: no half-written slide is left behind
        tmp_path.unlink(missing_ok=True)
        raise
    os.replace(tmp_path, slide_path)
    write_truth(out_dir, name, layout)
    row = {
        "name": name,
        "patient": patient,
        "node": node,
        "slide_path": slide_path.name,
        "xml_path": f"{name}.xml",
        "geojson_path": f"{name}.geojson",
        "node_class": node_class,
        "n_lesions": len(layout.lesions),
        "lesion_classes": ";".join(les.size_class for les in layout.lesions),
        "lesion_diameters_mm": ";".join(f"{les.diameter_mm:.4f}" for les in layout.lesions),
        "l0_mpp": l0_mpp,
        "l0_width": layout.l0_width,
        "l0_height": layout.l0_height,
        "size_mm": f"{size_mm[0]},{size_mm[1]}",
        "lesions": lesions,
        "shape": shape,
        "seed": seed,
        "normal_tiles": os.path.relpath(normal_tiles, out_dir),
        "tumour_tiles": os.path.relpath(tumour_tiles, out_dir),
        "tiles_mpp": tiles_mpp,
        "capsule_tiles": os.path.relpath(capsule_tiles, out_dir),
        "capsule_tiles_mpp": capsule_tiles_mpp,
        "stroma": int(stroma),
        "fat_tiles": os.path.relpath(fat_tiles, out_dir) if fat_tiles else "",
    }
    _update_manifest(out_dir, row)
    return row
