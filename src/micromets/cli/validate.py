"""Checks every command makes on its options before any work: numbers in range, words from a list, output paths
that can be written. One mechanism for all: each check is a typer callback, so a bad value stops the command while
its options are parsed, with one line naming the option and what it accepts (:class:`MicrometsError`, exit 2).

    threshold: Optional[float] = typer.Option(None, "--threshold", callback=validate.PROBABILITY)
    out: Path = typer.Option(..., "--out", callback=validate.OUT_FOLDER)
"""


import math
import os
import stat
import tempfile
from pathlib import Path
from typing import Callable

import typer

from micromets.errors import MicrometsError
from micromets.rules import NODE_CLASSES


def option_name(param: typer.CallbackParam) -> str:
    """How the user wrote the option: its long name (``--threshold``), or an argument's name in capitals."""
    long = [o for o in param.opts if o.startswith("--")]
    return long[0] if long else (getattr(param, "human_readable_name", None) or str(param.name)).upper()


def _values(value) -> list:
    return [] if value is None else list(value) if isinstance(value, (list, tuple)) else [value]


def in_range(low: float | None = None, high: float | None = None, *, low_open: bool = False,
             high_open: bool = False, unit: str = "") -> Callable:
    """A callback accepting finite numbers between ``low`` and ``high`` (closed unless ``*_open``; None: no bound);
    None (an option left out) passes."""
    left = "" if low is None else f"{'>' if low_open else '>='} {low:g}"
    right = "" if high is None else f"{'<' if high_open else '<='} {high:g}"
    wanted = " and ".join(p for p in (left, right) if p) + (f" {unit}" if unit else "")

    def check(param: typer.CallbackParam, value):
        for number in _values(value):
            ok = math.isfinite(number) and (low is None or (number > low if low_open else number >= low)) and (
                high is None or (number < high if high_open else number <= high))
            if not ok:
                raise MicrometsError(f"{option_name(param)} {number:g}: must be a number {wanted}")
        return value

    return check


def one_of(*choices: str, also: tuple[str, ...] = ()) -> Callable:
    """A callback accepting only ``choices`` (None passes), and the values ``also`` that an option still takes from
    its old meaning (see :func:`renamed`; not offered in the error)."""

    def check(param: typer.CallbackParam, value):
        for word in _values(value):
            if word not in choices + also:
                raise MicrometsError(f"{option_name(param)} {word!r}: choose {', '.join(choices)}")
        return value

    return check


#: A probability or a share, in [0, 1].
PROBABILITY = in_range(0, 1)
#: A resolution, size or duration that must be > 0.
POSITIVE = in_range(0, low_open=True)
#: A distance or duration that may be 0.
NON_NEGATIVE = in_range(0)
#: A TCP port (0: any free port).
PORT = in_range(0, 65535)
#: A resolution in µm/px.
MPP = in_range(0, low_open=True, unit="µm/px")


def _l0_mpp(param: typer.CallbackParam, value):
    if value is not None:
        from micromets.slide import check_l0_mpp  # slide imports OpenSlide: only when the option is given

        check_l0_mpp(value, option_name(param))
    return value


#: A slide's level-0 resolution in µm/px: only what a scanner gives (:data:`micromets.slide.PLAUSIBLE_MPP`).
L0_MPP = _l0_mpp


def _model(param: typer.CallbackParam, value):
    from micromets.model import resolve_model_dir

    return resolve_model_dir(value, option_name(param))


#: A detector: a model folder, or the name of an installed model (the folder under micromets/models); the
#: option's value becomes the model folder (None stays None: the default model).
MODEL = _model
#: A stain: H&E or cytokeratin IHC.
STAIN = one_of("he", "ihc")
#: Staging rule of a patient (micromets.patient.MODES): ``--rule`` of every command.
STAGE_MODE = one_of("camelyon17", "ajcc8")
#: Detector mode (micromets.analyze.MODES): ``--mode`` of every command.
DETECTOR_MODE = one_of("thorough", "fast")


def renamed(value, old_value, name: str, old_name: str, default=None):
    """The value of option ``name`` given either so or by its old spelling ``old_name`` (a hidden option whose
    default is None, checked by the same callback): old command lines keep working, with one note on stderr
    naming the new spelling. Both given, the new one not at its ``default``, with different values:
    :class:`MicrometsError`."""
    if old_value is None:
        return value
    if value not in (default, old_value):
        raise MicrometsError(f"{old_name} {old_value} and {name} {value}: give {name} only ({old_name} is its old "
                             "name)")
    typer.echo(f"micromets: note: {old_name} is now {name}", err=True)
    return old_value


#: Node classes (AJCC 8 / CAMELYON17 labels).
NODE_CLASS = one_of(*NODE_CLASSES)


def _nearest_existing(path: Path) -> Path:
    path = Path(os.path.abspath(path))
    while not os.path.lexists(path) and path != path.parent:
        path = path.parent
    return path


def _probe(folder: Path, what: str) -> None:
    """Create and delete a file in ``folder``: the only test that holds for root, read-only mounts and /proc."""
    try:
        with tempfile.TemporaryFile(dir=folder, prefix=".micromets-write-probe-"):
            pass
    except OSError as err:
        raise MicrometsError(f"{what}: not writable ({err.strerror or err})") from None


def writable_folder(path: Path, what: str | None = None) -> Path:
    """Refuse ``path`` unless it is (or can be made) a folder this process may write in; creates nothing."""
    what = what or str(path)
    if os.path.lexists(path) and not path.is_dir():
        raise MicrometsError(f"{what}: is a file, expected a folder")
    existing = _nearest_existing(path)
    if not existing.is_dir():
        raise MicrometsError(f"{what}: {existing} is a file, expected a folder")
    _probe(existing, what)
    return path


def writable_file(path: Path, what: str | None = None) -> Path:
    """Refuse ``path`` unless a file can be written there: not a folder, its folder writable. Missing folders above
    it are then created, so the command's own write needs nothing more."""
    what = what or str(path)
    if path.is_dir():
        raise MicrometsError(f"{what}: is a folder, expected a file name")
    if os.path.lexists(path):
        mode = os.stat(path).st_mode if path.exists() else 0
        if stat.S_ISCHR(mode):  # /dev/null and the like
            if not os.access(path, os.W_OK):
                raise MicrometsError(f"{what}: not writable")
            return path
        if not stat.S_ISREG(mode):
            raise MicrometsError(f"{what}: not a regular file")
    writable_folder(path.parent, what)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise MicrometsError(f"{what}: cannot create its folder ({err.strerror or err})") from None
    return path


def _path_check(test: Callable[[Path, str], Path]) -> Callable:
    def check(param: typer.CallbackParam, value):
        if value is not None:
            test(Path(value), f"{option_name(param)} {value}")
        return value

    return check


def not_blocking(path: Path, what: str | None = None) -> Path:
    """Refuse an existing ``path`` that is a FIFO, socket or device (:func:`micromets.slide.check_not_special_file`,
    the one rule for slides and every other input): reading one can block forever. A missing path or a folder
    passes (the command names those in its own words)."""
    try:
        os.stat(path)
    except OSError:
        return path
    from micromets.slide import check_not_special_file  # slide imports OpenSlide: only when the option is given

    check_not_special_file(path, what)
    return path


#: An input file (CSV, store): never a FIFO, socket or device.
IN_FILE = _path_check(not_blocking)
#: An output folder (created by the command when missing).
OUT_FOLDER = _path_check(writable_folder)
#: An output file (missing folders above it are created).
OUT_FILE = _path_check(writable_file)


def _new_model_name(param: typer.CallbackParam, value):
    import re

    from micromets.model import installed_models

    if value is not None:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", value):
            raise MicrometsError(f"{option_name(param)} {value!r}: use letters, digits, '.', '_' and '-' only")
        taken = installed_models().get(value)
        if taken is not None:
            raise MicrometsError(f"{option_name(param)} {value}: a model of that name is installed already ({taken})")
    return value


#: The name of a model about to be installed: a folder name, not one already taken (see micromets models).
NEW_MODEL_NAME = _new_model_name


def _words(param: typer.CallbackParam, value):
    if value is None:
        return None
    words = [w.strip() for w in value.split(",")]
    if len(words) < 2 or not all(words) or len(set(words)) != len(words):
        raise MicrometsError(f"{option_name(param)} {value!r}: give two or more distinct names, comma-separated")
    return words


#: A comma-separated list of two or more distinct names (the option's value becomes the list).
WORDS = _words


def _stain_jitter(param: typer.CallbackParam, value):
    from micromets.train.augment import parse_stain

    try:
        return parse_stain(value) if value else None
    except ValueError as err:
        raise MicrometsError(f"{option_name(param)} {value!r}: {err}") from None


#: The strength of the H&E stain augmentation, ``SIGMA,VECTOR_SIGMA[,CAST]`` (micromets.train.augment.stain_jitter;
#: the value becomes a tuple of numbers; empty: the recipe's own).
STAIN_JITTER = _stain_jitter


def numbers(count: int, low: float | None = None, *, low_open: bool = False) -> Callable:
    """A callback turning ``"a,b,c"`` into ``count`` finite numbers, each checked as by :func:`in_range`."""
    each = in_range(low, low_open=low_open)

    def check(param: typer.CallbackParam, value):
        if value is None:
            return None
        try:
            parsed = [float(v) for v in value.split(",")]
        except ValueError:
            parsed = []
        if len(parsed) != count:
            raise MicrometsError(f"{option_name(param)} {value!r}: give {count} numbers, comma-separated")
        return each(param, parsed)

    return check


#: A per-channel (R,G,B) mean and standard deviation of the pixel scaling.
RGB_MEAN = numbers(3)
RGB_STD = numbers(3, 0, low_open=True)


def _sha256(param: typer.CallbackParam, value):
    import re

    if value is not None and not re.fullmatch(r"[0-9a-fA-F]{64}", value):
        raise MicrometsError(f"{option_name(param)} {value!r}: a sha256 is 64 hexadecimal digits")
    return value


#: A sha256 digest (64 hex digits).
SHA256 = _sha256
#: A count that must be at least 1 (batch size, threads).
COUNT = in_range(1)
