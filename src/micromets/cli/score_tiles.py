"""`micromets score-tiles`: tumour probability of every image file under a folder, as CSV."""

import csv
from pathlib import Path
from typing import Optional

import typer

from micromets.cli import validate
from micromets.cli.app import app
from micromets.words import counted


@app.command("score-tiles")
def score_tiles(
    folder: Path = typer.Argument(..., help="Folder searched recursively for .png .jpg .jpeg .tif .tiff images."),
    mpp: float = typer.Option(..., "--mpp", callback=validate.MPP, help="Resolution of the images in µm/px (e.g. 0.243 for CAMELYON level 0, 0.5 for 20x)."),
    out: Path = typer.Option(..., "--out", "-o", callback=validate.OUT_FILE, help="CSV to write: path,probability (one row per image)."),
    model: Optional[Path] = typer.Option(None, "--model", callback=validate.MODEL, help="An installed model by name (see micromets models) or a folder with model.onnx + model.json (default: the bundled model)."),
) -> None:
    """Score labelled or unlabelled tiles with a detector: one tumour probability (0–1) per image.

    Each image is resampled from --mpp to the model's µm/px. An image larger than the model's field
    (patch_px × input_mpp µm) is covered by non-overlapping model windows (the last one flush with the edge) and
    its probability is the maximum over them: a tile is tumour if any part of it is. A smaller image is padded by
    reflection to the model's field. Stain vectors are estimated from each tile itself. Unreadable images stop
    the run with an error naming the file; rows already scored are written first.
    """
    from micromets.errors import MicrometsError
    from micromets.model import Detector
    from micromets.train.data import IMAGE_SUFFIXES, read_rgb

    if not mpp > 0:
        raise MicrometsError(f"--mpp {mpp}: the images' resolution must be > 0 µm/px")
    if not folder.is_dir():
        raise MicrometsError(f"{folder}: not a folder")
    paths = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise MicrometsError(f"{folder}: no image files (.png .jpg .jpeg .tif .tiff) found")
    detector = Detector.load(model)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "probability"])
        for path in paths:
            writer.writerow([str(path), f"{detector.score_image(read_rgb(path), mpp):.6f}"])
            fh.flush()
    typer.echo(f"scored {counted(len(paths), 'image')} with {detector.name} {detector.version} → {out}")
