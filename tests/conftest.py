"""Shared test fixtures: where the real data lives and where tests may write."""

import os
from pathlib import Path

import numpy as np
import pytest
import tifffile

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
DEMO_MANIFEST = REPO / "demo" / "manifest.csv"


def require_tools(*names: str) -> None:
    """Skip a test when a system tool it needs is missing (a user's machine); in CI, where `make test` installs
    them, fail instead."""
    import shutil

    missing = [name for name in names if shutil.which(name) is None]
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"{', '.join(missing)} missing (make test installs them)")
        pytest.skip(f"{', '.join(missing)} not installed")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The read-only real data folder (../shared/data). Always present in CI; skipped elsewhere when absent."""
    if not (SHARED_DATA / "README.md").exists():
        if os.environ.get("CI"):
            pytest.fail(f"real data missing at {SHARED_DATA} (CI must have it)")
        pytest.skip(f"real data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def demo_output(tmp_path_factory) -> Path:
    """The output folder of one real `run_case` on the bundled demo manifest (shared by the tests that read it;
    reports off: the report tests write them)."""
    from micromets.case import run_case
    from micromets.model import Detector

    out = tmp_path_factory.mktemp("demo-case")
    run_case(DEMO_MANIFEST, out, detector=Detector.load(), report=False)
    return out


@pytest.fixture(scope="session")
def candidate_output(tmp_path_factory) -> Path:
    """The demo manifest run as :func:`demo_output` is, by the default detector with a stricter card: confirmation
    at 0.8, so node 3's ITC (confirmed 0.749) is kept as an unconfirmed candidate (``candidate:1`` of node3; the
    demo itself, since the heatmap's edge check, leaves no candidate). A reviewer's case to accept one in."""
    from micromets.case import run_case
    from micromets.model import Detector

    detector = Detector.load()
    detector.card = {**detector.card, "confirm_threshold": 0.8}
    out = tmp_path_factory.mktemp("candidate-case")
    run_case(DEMO_MANIFEST, out, detector=detector, report=False)
    return out


@pytest.fixture(scope="session")
def artifacts() -> Path:
    """A folder for pictures and tables that tests leave for a person to look at (git-ignored)."""
    path = REPO / "test-artifacts"
    path.mkdir(exist_ok=True)
    return path


def write_sparse_giant(path: Path, rgb_tile: np.ndarray, n_tiles: int = 256) -> Path:
    """A one-level tiled JPEG TIFF declaring (256·n)² px at 0.25 µm/px whose every tile is ``rgb_tile``
    (256 × 256 RGB): a file of under a megabyte that reads like a huge slide without a pyramid."""
    tifffile.imwrite(path, rgb_tile[:256, :256], tile=(256, 256), compression="jpeg", photometric="rgb",
                     resolution=(40_000, 40_000), resolutionunit="CENTIMETER")
    with tifffile.TiffFile(path, mode="r+b") as tif:
        page = tif.pages[0]
        offset, count = page.tags["TileOffsets"].value[0], page.tags["TileByteCounts"].value[0]
        page.tags["ImageWidth"].overwrite(256 * n_tiles, dtype="I")
        page.tags["ImageLength"].overwrite(256 * n_tiles, dtype="I")
        page.tags["TileOffsets"].overwrite(np.full(n_tiles**2, offset, np.uint32))
        page.tags["TileByteCounts"].overwrite(np.full(n_tiles**2, count, np.uint32))
    return path


#: the square speckled with ink by :func:`write_inked_node3` (level 0: y, x, side); demo node 3's ITC lies at
#: x 1615-1921, y 1550-1752, away from it
INKED_SQUARE = (700, 600, 800)


def write_inked_node3(path: Path) -> Path:
    """Demo node 3 with black marking ink speckled over a square of its cortex (:data:`INKED_SQUARE`): half the
    pixels, in 4 px blots, rewritten as a pyramidal TIFF at the node's µm/px."""
    import openslide

    from micromets.phantom.pyramid import write_pyramid

    with openslide.OpenSlide(REPO / "demo" / "slides" / "node3.tiff") as src:
        rgb = np.asarray(src.read_region((0, 0), 0, src.dimensions).convert("RGB")).copy()
        l0_mpp = float(src.properties["openslide.mpp-x"])
    y0, x0, side = INKED_SQUARE
    yy, xx = np.mgrid[:side, :side]
    rgb[y0:y0 + side, x0:x0 + side][(yy // 4 + xx // 4) % 2 == 0] = (28, 25, 22)
    write_pyramid(path, rgb.shape[1], rgb.shape[0], l0_mpp, lambda x, y, w, h: rgb[y:y + h, x:x + w])
    return path


@pytest.fixture(scope="session", autouse=True)
def _no_user_models(tmp_path_factory):
    """Tests see only the bundled models: the user models folder (``$MICROMETS_MODELS``) is an empty temporary
    folder, whatever the developer installed with ``micromets import-model``; subprocesses inherit it."""
    previous = os.environ.get("MICROMETS_MODELS")
    os.environ["MICROMETS_MODELS"] = str(tmp_path_factory.mktemp("user-models"))
    yield
    if previous is None:
        os.environ.pop("MICROMETS_MODELS", None)
    else:
        os.environ["MICROMETS_MODELS"] = previous


def default_with_context(tmp_path: Path, context_dir: str | None, context_mpp: float | None = None) -> Path:
    """A copy of the shipped default model in ``tmp_path`` with the installed model ``context_dir`` (a folder of
    src/micromets/models) as its context model, read at ``context_mpp`` µm/px when given (a real network of another
    field than the detector's); ``context_dir`` None: with no context model. Returns the model folder."""
    import json
    import shutil

    models = REPO / "src" / "micromets" / "models"
    folder = tmp_path / f"default-context-{context_dir}-{context_mpp}"
    shutil.copytree(models / "default", folder)
    shutil.rmtree(folder / "context", ignore_errors=True)  # the default's own context model, replaced
    card = json.loads((folder / "model.json").read_text())
    card.pop("context", None)
    if context_dir is not None:
        shutil.copytree(models / context_dir, folder / "context")
        if context_mpp is not None:
            context_card = json.loads((folder / "context" / "model.json").read_text())
            (folder / "context" / "model.json").write_text(json.dumps({**context_card, "input_mpp": context_mpp}))
        card["context"] = {"folder": "context"}
    (folder / "model.json").write_text(json.dumps(card))
    return folder
