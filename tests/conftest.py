"""Shared test fixtures: where the real data lives and where tests may write."""

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The read-only real data folder (../shared/data). Always present in CI; skipped elsewhere when absent."""
    if not (SHARED_DATA / "README.md").exists():
        if os.environ.get("CI"):
            pytest.fail(f"real data missing at {SHARED_DATA} (CI must have it)")
        pytest.skip(f"real data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def artifacts() -> Path:
    """A folder for pictures and tables that tests leave for a person to look at (git-ignored)."""
    path = REPO / "test-artifacts"
    path.mkdir(exist_ok=True)
    return path
