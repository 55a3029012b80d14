"""Reading a JSON file given or written earlier (result.json, case.json, annotations) with a one-line error.

Every reader of such files goes through :func:`read_json`, so a missing, truncated, binary or absurdly nested file
gives the same one-line :class:`JsonFileError` (a :class:`~micromets.errors.MicrometsError`: exit code 2) wherever
it is read, never a traceback.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from micromets.errors import MicrometsError


class JsonFileError(MicrometsError):
    """A JSON file that cannot be used; ``why`` is the message without the path."""

    def __init__(self, path: Path, why: str) -> None:
        super().__init__(f"{path}: {why}")
        self.why = why


def read_json(path: str | Path, schema: str | None = None,
              parse_constant: Callable[[str], Any] | None = None) -> Any:
    """The JSON value in ``path``; with ``schema``, it must be an object whose ``"schema"`` is that name.

    Raises :class:`JsonFileError` for a file that is missing or unreadable, not UTF-8, not JSON, nested deeper than
    the parser goes, or (with ``schema``) another kind of file. ``parse_constant`` as in :func:`json.load`.
    """
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle, parse_constant=parse_constant)
    except FileNotFoundError:
        raise JsonFileError(path, "not found") from None
    except json.JSONDecodeError as err:
        raise JsonFileError(path, f"malformed JSON: {err.msg} at line {err.lineno}") from None
    except UnicodeDecodeError:
        raise JsonFileError(path, "not a UTF-8 text file") from None
    except RecursionError:
        raise JsonFileError(path, "JSON nested too deeply") from None
    except OSError as err:
        raise JsonFileError(path, f"cannot read: {err.strerror or err}") from None
    if schema is not None and not (isinstance(data, dict) and data.get("schema") == schema):
        raise JsonFileError(path, f"not a {schema} file")
    return data
