"""Issue 16, last items: a grayscale slide, onnxruntime's own warnings and `report`'s output folder each give
micromets' one clear line and exit 2. Real slides (written with tifffile), real commands; each test failed on the
code before its fix."""

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from test_cli_hardening import cli

C17_MPP = 0.243


@pytest.fixture(scope="module")
def gray_slide(tmp_path_factory, shared_data) -> Path:
    """A one-channel (minisblack) pyramidal TIFF of real lymph-node tissue: OpenSlide reads it as R = G = B."""
    tile = sorted((shared_data / "camelyon17_tiles").glob("*.jpeg"))[0]
    level = np.asarray(Image.open(tile).convert("L"))[:1024, :1024]
    path = tmp_path_factory.mktemp("gray") / "gray.tif"
    px_per_cm = 1e4 / C17_MPP
    with tifffile.TiffWriter(path) as tif:
        for index in range(3):  # 1024, 512, 256 px
            tif.write(level, tile=(256, 256), photometric="minisblack", compression="jpeg",
                      resolution=(px_per_cm / 2**index, px_per_cm / 2**index), resolutionunit="CENTIMETER",
                      subfiletype=1 if index else 0)
            level = np.asarray(Image.fromarray(level).reduce(2))
    return path


@pytest.mark.parametrize("command", ["analyze", "case", "batch"])
def test_a_grayscale_slide_is_named_as_such_not_as_holding_no_tissue(tmp_path, capsys, gray_slide, command):
    out = tmp_path / "out"
    if command == "case":
        manifest = tmp_path / "m.csv"
        manifest.write_text(f"patient,node,slide_path\np,1,{gray_slide}\n")
        args = ["case", manifest, "--out", out]
    else:
        args = [command, gray_slide, "--out", out]
    code, _, err = cli(capsys, *args)
    assert code == 2, err
    lines = [line for line in err.splitlines() if ": grayscale slide" in line]  # batch says "failed PATH: why"
    assert len(lines) == 1, err
    assert "gray.tif: grayscale slide" in lines[0] and "not an H&E or IHC colour image" in lines[0]
    assert "no tissue" not in err
