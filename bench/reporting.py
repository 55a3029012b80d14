"""What the bench scripts share: the hot-cell numbers of a ``micromets analyze`` run, read back from its outputs, and
the result files, ``<stem>.json`` (the numbers) and ``<stem>.md`` (the table a person reads), named by the UTC
time of the run."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np


def add_run_options(ap, work_help: str = "slide cache and analyze outputs") -> None:
    """The options of a bench script that builds slides and runs ``micromets analyze`` on them with a model:
    ``--model`` (required), ``--data-root``, ``--work`` and ``--out``."""
    ap.add_argument("--model", required=True, help="model folder (or installed model name) to analyse with")
    ap.add_argument("--data-root", type=Path, default=Path("../shared/data"))
    ap.add_argument("--work", type=Path, default=Path("bench/work"), help=work_help)
    ap.add_argument("--out", type=Path, default=Path("bench/results"), help="where the .json / .md go")


def utc_stamp() -> str:
    """The run's UTC time as results are named: ``20261207T190102Z``."""
    return f"{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%SZ}"


def write_report(stem: Path, data: dict, markdown: str) -> None:
    """Write ``data`` to ``<stem>.json`` and ``markdown`` to ``<stem>.md`` (making the folder), then print the
    markdown and where both went."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_name(stem.name + ".json").write_text(json.dumps(data, indent=1) + "\n")
    stem.with_name(stem.name + ".md").write_text(markdown if markdown.endswith("\n") else markdown + "\n")
    print(markdown)
    print(f"wrote {stem}.json and .md")


def hot_cells(result: dict, h_prob: np.ndarray) -> dict:
    """The run's threshold, its scored tissue cells (``timing_s.n_patches``), the cells of its saved heatmap
    ``h_prob`` at or above the threshold, their share of the tissue cells (None without tissue) and the highest
    cell."""
    threshold = float(result["threshold"])
    n_tissue = int(result["timing_s"]["n_patches"])
    n_hot = int((h_prob >= threshold).sum())
    return {"threshold": threshold, "tissue_cells": n_tissue, "cells_at_or_above": n_hot,
            "cell_share": n_hot / n_tissue if n_tissue else None, "max_cell_probability": float(h_prob.max())}
