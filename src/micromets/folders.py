"""The one rule that names a slide's output folder, for `analyze`, `case` and `batch`.

A slide's folder is ``OUT/<slide_id>/`` (the file name without its suffix; for a DICOM slide, the name of its folder of
.dcm files) unless another slide already holds that name; it is then ``OUT/<slide_id>~<8 hex>/``, the hex being the
SHA-256 of the slide's key. A slide that already has a folder keeps it (re-analysing a slide replaces its own results,
never another slide's). The key says what "the same slide" means: for `batch` its content id and settings, for
`analyze` and `case` the resolved file path (a DICOM slide's folder).
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
from pathlib import Path

from micromets.slide import dicom_folder, slide_id_of


def folder_name(slide_stem: str, key: tuple[str, ...], owners: dict[str, tuple[str, ...]],
                previous: str | None = None) -> str:
    """Output folder name of a slide: ``previous`` (its folder from before), else ``slide_stem`` when no other key
    holds it in ``owners`` (folder name → key), else ``<slide_stem>~<8 hex of the key>``."""
    if previous is not None:
        return previous
    if owners.get(slide_stem, key) == key:
        return slide_stem
    return f"{slide_stem}~{hashlib.sha256('|'.join(key).encode()).hexdigest()[:8]}"


def _recorded_path(folder: Path) -> str | None:
    """The resolved slide path that ``folder/result.json`` was made from (None: no readable result)."""
    try:
        path = json.loads((folder / "result.json").read_text()).get("path")
    except (OSError, ValueError, AttributeError, RecursionError):
        return None
    return path if isinstance(path, str) else None


def plan_folders(slides: list[Path], out_dir: Path) -> list[str]:
    """The folder name under ``out_dir`` of each slide file (same order), keyed by the resolved path (a DICOM
    slide's folder, whichever of its files is named): two files with one name get two folders, and folders left in
    ``out_dir`` by earlier runs keep their slide."""
    owners: dict[str, tuple[str, ...]] = {}
    names = []
    for slide in slides:
        key = (os.path.realpath(dicom_folder(slide) or slide),)
        stem = slide_id_of(slide)
        if out_dir.is_dir():
            for folder in [out_dir / stem, *sorted(out_dir.glob(f"{glob.escape(stem)}~*"))]:
                if folder.name not in owners and (recorded := _recorded_path(folder)) is not None:
                    owners[folder.name] = (recorded,)
        previous = next((name for name, owner in owners.items() if owner == key), None)
        name = folder_name(stem, key, owners, previous)
        owners[name] = key
        names.append(name)
    return names
