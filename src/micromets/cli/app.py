"""The typer application that every sub-command module registers itself on."""

import typer

app = typer.Typer(
    name="micromets",
    help=(
        "Find micrometastases in lymph-node whole-slide images and stage the patient.\n\n"
        "Units: sizes in mm (deposit diameter = maximum Feret diameter), areas in mm², resolution in µm/px; "
        "outlines are in level-0 pixels of the slide. Node classes follow AJCC 8 (ITC <= 0.2 mm, "
        "micrometastasis > 0.2 and <= 2.0 mm, macrometastasis > 2.0 mm). Research use only."
    ),
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
