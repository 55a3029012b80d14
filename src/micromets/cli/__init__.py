"""Command line: `micromets <command>`. Each sub-command lives in its own module and registers on `app`."""

import inspect
import re
import sys

from micromets.cli.app import app
from micromets.errors import MicrometsError

# Sub-command modules register themselves on import.
from micromets.cli import analyze  # noqa: F401,E402
from micromets.cli import measure, stage, evaluate  # noqa: F401,E402
from micromets.cli import train, score_tiles  # noqa: F401,E402
from micromets.cli import phantom  # noqa: F401,E402
from micromets.cli import bench  # noqa: F401,E402
from micromets.cli import case  # noqa: F401,E402
from micromets.cli import batch, results, threshold  # noqa: F401,E402
from micromets.cli import report, view  # noqa: F401,E402
from micromets.cli import models, import_model  # noqa: F401,E402


def _paragraphs(doc: str) -> str:
    """A docstring as help text: lines of one paragraph joined, so the terminal wraps them evenly."""
    return re.sub(r"(?<!\n)\n(?!\n)", " ", inspect.cleandoc(doc))


for _command in app.registered_commands:
    if _command.help is None and _command.callback is not None and _command.callback.__doc__:
        _command.help = _paragraphs(_command.callback.__doc__)


def main() -> None:
    """Entry point: a bad input ends as one line on stderr and exit code 2."""
    try:
        app()
    except MicrometsError as err:
        print(f"micromets: error: {err}", file=sys.stderr)
        sys.exit(MicrometsError.exit_code)
