"""One real `micromets case` run on the bundled demo manifest per test session, shared by the report and viewer
tests (the run takes ~20 s on 2 cores). Reports are off: the report tests write them."""

from pathlib import Path

import pytest

DEMO = Path(__file__).resolve().parents[1] / "demo" / "manifest.csv"
_RUNS: dict[int, Path] = {}


def demo_case_output(tmp_path_factory) -> Path:
    """The output folder of `run_case(demo/manifest.csv)`, computed once per session."""
    key = id(tmp_path_factory)
    if key not in _RUNS:
        if not DEMO.is_file():
            pytest.skip(f"demo case not found at {DEMO}")
        from micromets.case import run_case
        from micromets.model import Detector

        out = tmp_path_factory.mktemp("demo-case")
        run_case(DEMO, out, detector=Detector.load(), report=False)
        _RUNS[key] = out
    return _RUNS[key]
