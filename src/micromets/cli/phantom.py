"""`micromets phantom`: a synthetic lymph-node slide with lesions of known size and place, and its ground truth."""

from pathlib import Path
from typing import Optional

import typer

from micromets.cli import validate
from micromets.cli.app import app
from micromets.words import counted


@app.command("phantom")
def phantom(
    normal_tiles: Path = typer.Option(..., "--normal-tiles", help="Folder of real NORMAL lymph-node H&E tiles (PNG/JPEG/TIFF) that fill the node."),
    tumour_tiles: Path = typer.Option(..., "--tumour-tiles", help="Folder of real TUMOUR H&E tiles that fill the lesions."),
    tiles_mpp: float = typer.Option(..., "--tiles-mpp", callback=validate.MPP, help="Resolution of the tiles in µm/px (CAMELYON16 level 0: 0.243)."),
    lesions: str = typer.Option(..., "--lesions", help="itc:N,micro:N,macro:N or none; append @D to fix the maximum Feret diameter to D mm (e.g. micro:1@0.8). Drawn sizes: ITC 0.06-0.18 mm, micro 0.3-1.8 mm, macro 2.2-3.0 mm."),
    size_mm: str = typer.Option(..., "--size-mm", help="Slide width,height in mm (e.g. 3,2.5; at most 80 each); the node fills ~78% of it."),
    out: Path = typer.Option(..., "--out", "-o", callback=validate.OUT_FOLDER, help="Output folder: OUT/<name>.tiff, .xml, .geojson and OUT/manifest.csv."),
    mpp: float = typer.Option(0.243, "--mpp", callback=validate.MPP, help="Level-0 resolution of the phantom in µm/px (0.243 = 40x CAMELYON; 0.486 = 20x)."),
    seed: int = typer.Option(0, "--seed", help="Random seed: same arguments and seed give the same slide."),
    name: Optional[str] = typer.Option(None, "--name", help="File stem (default: from the lesion spec and seed)."),
    shape: str = typer.Option("blob", "--shape", help="Lesion outline: blob (lobulated), disc, or camelyon16 (real outlines, needs --polygons)."),
    polygons: Optional[Path] = typer.Option(None, "--polygons", help="Folder of CAMELYON16 polygon JSON files for --shape camelyon16."),
    jpeg_quality: int = typer.Option(80, "--jpeg-quality", min=1, max=100, help="JPEG quality of the TIFF tiles."),
    patient: str = typer.Option("", "--patient", help="Patient id recorded in the manifest (groups nodes for pN staging in micromets bench)."),
    node: str = typer.Option("", "--node", help="Node label recorded in the manifest."),
    capsule_tiles: Optional[Path] = typer.Option(None, "--capsule-tiles", help="Folder of fibrous-stroma H&E tiles for the node's 30 µm capsule, re-stained to the normal tiles' H&E (default: the 3 bundled Kather 2016 STROMA tiles, CC BY 4.0)."),
    capsule_tiles_mpp: float = typer.Option(0.495, "--capsule-tiles-mpp", callback=validate.MPP, help="Resolution of the capsule (and fat) tiles in µm/px (Kather 2016: 0.495)."),
    stroma: bool = typer.Option(False, "--stroma/--no-stroma", help="Also draw fibrous trabeculae and stroma islands inside the node, with the capsule tiles (micromets bench does)."),
    fat_tiles: Optional[Path] = typer.Option(None, "--fat-tiles", help="Folder of adipose H&E tiles (at --capsule-tiles-mpp) for the perinodal fat instead of drawn adipocytes; 'bundled' = the 3 bundled Kather 2016 ADIPOSE tiles (CC BY 4.0)."),
) -> None:
    """Build one phantom slide: a lymph node (capsule, cortex, perinodal fat, glass) from real normal tiles, with
    tumour lesions of prescribed maximum Feret diameter (mm) from real tumour tiles and a capsule of real stroma.

    Tiles are resampled from --tiles-mpp to --mpp (µm/px), randomly rotated/mirrored and feathered together.
    Ground truth in level-0 pixels: ASAP XML and GeoJSON outlines; OUT/manifest.csv gets one row per phantom
    with the expected node class (CAMELYON17 labels from the largest lesion: ITC < 0.2 mm, micro 0.2-2.0 mm,
    macro > 2.0 mm; drawn sizes stay clear of the boundaries) and every lesion's diameter in mm.
    Memory stays flat in slide size (tile rows are streamed), so CAMELYON-size slides are possible.
    """
    from micromets.errors import MicrometsError
    from micromets.phantom.build import CAPSULE_TILES, FAT_TILES, MAX_SIZE_MM, build_phantom

    try:
        width_mm, height_mm = (float(v) for v in size_mm.split(","))
    except ValueError:
        raise MicrometsError(f"--size-mm must be WIDTH,HEIGHT in mm, got {size_mm!r}") from None
    if not all(0 < v <= MAX_SIZE_MM for v in (width_mm, height_mm)):
        raise MicrometsError(f"--size-mm {size_mm}: each side must be > 0 and <= {MAX_SIZE_MM:g} mm (a glass slide)")
    row = build_phantom(out, normal_tiles, tumour_tiles, tiles_mpp, lesions, (width_mm, height_mm), mpp, seed,
                        name, shape, polygons, jpeg_quality, patient, node, capsule_tiles or CAPSULE_TILES,
                        capsule_tiles_mpp, stroma, FAT_TILES if str(fat_tiles) == "bundled" else fat_tiles)
    typer.echo(f"{out / row['slide_path']}: {row['l0_width']} x {row['l0_height']} px at {mpp} µm/px, "
               f"{counted(row['n_lesions'], 'lesion')} {row['lesion_diameters_mm'] or '-'} mm, node class {row['node_class']}")
