"""`micromets models`: the installed detectors and their cards."""

import json
from pathlib import Path
from typing import Optional

import typer

from micromets.cli import validate
from micromets.cli.app import app
from micromets.words import counted


@app.command("models")
def models(
    name: Optional[Path] = typer.Argument(None, callback=validate.MODEL, help="An installed model's name (or a model "
                                                                         "folder): print its card as JSON."),
) -> None:
    """List the installed detectors, or print one model's card.

    Each installed model is a folder under micromets/models, or under the user models folder ($MICROMETS_MODELS,
    else ~/.local/share/micromets/models: micromets import-model and fetch-model install there), with model.onnx
    and its card model.json; its folder name is what --model takes (analyze, case, batch, bench, score-tiles).
    The list gives each one's card name and version, classes (and which one is the tumour class), the resolution (µm/px) and patch size (px) it looks at,
    its licence and, when the card has one, its held-out headline. With NAME, that card is printed as JSON.
    """
    from micromets.errors import MicrometsError
    from micromets.model import default_model_dir, held_out_headline, installed_models

    def card_of(folder: Path) -> dict:
        try:
            return json.loads((folder / "model.json").read_text())
        except (OSError, ValueError) as err:
            raise MicrometsError(f"{folder / 'model.json'}: unreadable model card ({err})") from None

    if name is not None:
        typer.echo(json.dumps(card_of(name), indent=2, ensure_ascii=False))
        return
    installed = installed_models()
    typer.echo(f"{counted(len(installed), 'installed model')} "
               f"(micromets models NAME prints a card; --model NAME uses one)", err=True)
    for folder_name, folder in installed.items():
        card = card_of(folder)
        classes = card.get("classes", [])
        k = card.get("tumour_class_index")
        tumour = classes[k] if isinstance(k, int) and 0 <= k < len(classes) else "?"
        default = " (the default)" if folder.resolve() == default_model_dir().resolve() else ""
        typer.echo(f"{folder_name}{default}: {card.get('name')} {card.get('version')}")
        typer.echo(f"  classes: {', '.join(map(str, classes))} (tumour class: {tumour})")
        typer.echo(f"  input: {card.get('input_mpp')} µm/px, {card.get('patch_px')} px patches")
        context = card.get("context")
        if isinstance(context, dict):
            typer.echo(f"  context check: {context.get('field_um')} µm at {context.get('input_mpp')} µm/px around "
                       f"each hot cell ({context.get('folder')}/)")
        typer.echo(f"  licence: {card.get('licence', 'not stated in its card')}")
        if folder.parent.resolve() != default_model_dir().parent.resolve():
            typer.echo(f"  user model: {folder}")
        headline = held_out_headline(card)
        if headline:
            typer.echo(f"  {headline}")
