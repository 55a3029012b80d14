"""`micromets import-model` and `micromets fetch-model`: a user's own detector installed under a name."""

from pathlib import Path
from typing import Optional

import typer

from micromets.cli import validate
from micromets.cli.app import app


def _destination(name: str, out: Optional[Path]) -> Path:
    """The model folder to write: ``out``, else NAME in the user's models folder; refused unless it is new (or
    an empty folder) and writable."""
    from micromets.errors import MicrometsError
    from micromets.model import user_models_dir

    dest = out if out is not None else user_models_dir() / name
    what = f"--out {out}" if out is not None else f"{dest} (the user models folder, $MICROMETS_MODELS)"
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise MicrometsError(f"{what}: exists already; give a new folder or another --name")
    validate.writable_folder(dest, what)
    return dest


@app.command("import-model")
def import_model(
    src: Path = typer.Argument(..., callback=validate.IN_FILE, help="The classifier: an .onnx file, a TorchScript "
                               "file (torch.jit.save) or a whole nn.Module saved with torch.save (.pt, .pth)."),
    name: str = typer.Option(..., "--name", callback=validate.NEW_MODEL_NAME, help="The model's name (--model NAME)."),
    input_mpp: float = typer.Option(..., "--input-mpp", callback=validate.MPP, help="Resolution the model was "
                                    "trained at, µm/px (0.5 ≈ 20x, 0.25 ≈ 40x)."),
    patch_px: int = typer.Option(..., "--patch-px", callback=validate.COUNT, help="Side of its input patches, px."),
    classes: str = typer.Option("normal,tumour", "--classes", callback=validate.WORDS, help="Its output classes "
                                "in order, comma-separated."),
    tumour_class: str = typer.Option("tumour", "--tumour-class", help="Which of --classes is tumour."),
    mean: str = typer.Option("0,0,0", "--mean", callback=validate.RGB_MEAN, help="Per-channel R,G,B mean of the "
                             "input scaling: the network sees (x/255 - mean)/std."),
    std: str = typer.Option("1,1,1", "--std", callback=validate.RGB_STD, help="Per-channel R,G,B std of the "
                            "input scaling."),
    scores: str = typer.Option("logits", "--scores", callback=validate.one_of("logits", "probabilities"),
                               help="What its output is: logits (micromets applies softmax) or probabilities "
                               "(softmax inside the model; taken as they are)."),
    licence: Optional[str] = typer.Option(None, "--licence", help="The model's licence, for its card."),
    out: Optional[Path] = typer.Option(None, "--out", callback=validate.OUT_FOLDER, help="Model folder to write "
                                       "(use it as --model DIR); default: NAME in the user models folder "
                                       "($MICROMETS_MODELS, else ~/.local/share/micromets/models), listed by "
                                       "micromets models."),
) -> None:
    """Make your own patch classifier a micromets model: model.onnx + its card model.json.

    The classifier takes float32 N×3×P×P patches (RGB, scaled as --mean/--std say) and gives N×C scores, one per
    class (logits, or probabilities with --scores probabilities). A TorchScript or PyTorch file is converted to ONNX
    (needs torch: pip install 'micromets[train]'); loading a pickled module runs its code, so import only files you
    trust. The ONNX graph is run with onnxruntime on two patches before it is installed; the card records the
    resolution, patch size, classes and scaling given here (no stain normalisation).
    """
    from micromets.errors import MicrometsError
    from micromets.model_import import import_model as build

    if not src.is_file():
        raise MicrometsError(f"SRC {src}: no such file")
    if tumour_class not in classes:
        raise MicrometsError(f"--tumour-class {tumour_class!r}: not one of --classes {', '.join(classes)}")
    dest = _destination(name, out)
    build(src, dest, name=name, input_mpp=input_mpp, patch_px=patch_px, classes=classes, tumour_class=tumour_class,
          mean=mean, std=std, licence=licence, scores=scores)
    typer.echo(f"{dest}: model {name} ({len(classes)} classes, {patch_px} px at {input_mpp:g} µm/px); "
               f"use --model {name if out is None else dest}", err=True)
    typer.echo(str(dest))


@app.command("fetch-model")
def fetch_model(
    url: str = typer.Argument(..., help="URL of a zip holding model.onnx and model.json (http, https or file)."),
    name: str = typer.Option(..., "--name", callback=validate.NEW_MODEL_NAME, help="The model's name (--model NAME)."),
    sha256: Optional[str] = typer.Option(None, "--sha256", callback=validate.SHA256, help="Expected sha256 of the "
                                         "zip; a download that differs is refused and nothing is installed."),
    out: Optional[Path] = typer.Option(None, "--out", callback=validate.OUT_FOLDER, help="Model folder to write; "
                                       "default: NAME in the user models folder."),
) -> None:
    """Download a model (zip of model.onnx + model.json) into the user models folder, only when asked.

    Nothing in micromets downloads otherwise. The model is loaded once as every command loads it before it is
    installed; a bad sha256, a zip without a model or a card the detector refuses installs nothing.
    """
    from micromets.model_import import fetch_model as download

    dest = _destination(name, out)
    download(url, dest, sha256)
    typer.echo(f"{dest}: model {name} from {url}; use --model {name if out is None else dest}", err=True)
    typer.echo(str(dest))
