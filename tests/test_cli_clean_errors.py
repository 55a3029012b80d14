"""Issue 16, last items: a grayscale slide, onnxruntime's own warnings and `report`'s output folder each give
micromets' one clear line and exit 2. Real slides (written with tifffile), real commands; each test failed on the
code before its fix."""

import os
import shutil
import subprocess
import sys
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


@pytest.mark.parametrize("slide", ["missing.tif", "node1.tiff"])
def test_an_unwritable_home_leaves_stderr_to_micromets(tmp_path, slide):
    """onnxruntime printed an ANSI-coloured telemetry warning before micromets' own line when HOME is not
    writable; stderr now holds only micromets' lines (error or progress), no escape codes."""
    demo = Path(__file__).parents[1] / "src" / "micromets" / "data" / "demo" / "slides"
    path = demo / slide if slide == "node1.tiff" else tmp_path / slide
    env = {k: v for k, v in os.environ.items() if k != "ORT_DISABLE_TELEMETRY"}
    env.update(HOME="/proc/nonexistent", PYTHONPATH=str(Path(__file__).parents[1] / "src"))
    done = subprocess.run([sys.executable, "-m", "micromets", "analyze", str(path), "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, env=env, timeout=300)
    assert "\x1b[" not in done.stderr and "onnxruntime" not in done.stderr and "telemetry" not in done.stderr
    if slide == "node1.tiff":
        assert done.returncode == 0, done.stderr
        assert (tmp_path / "out" / "node1" / "result.json").is_file()
    else:
        assert done.returncode == 2
        # one line: the failed slide's progress bar ("failed ━━━ 0/None patches") is gone
        assert done.stderr.strip().splitlines() == [f"micromets: error: {path}: no such file"], done.stderr


@pytest.mark.parametrize("bad", ["html-is-a-folder", "pdf-is-a-folder", "read-only"])
def test_report_checks_its_outputs_before_rendering(tmp_path, capsys, demo_output, bad):
    """report.html / report.pdf that cannot be written (a folder in their place, or a read-only patient folder):
    one line naming the file, exit 2, before any rendering (no report.html.part left behind)."""
    patient = tmp_path / "demo_patient"
    shutil.copytree(demo_output / "demo_patient", patient)
    if bad != "read-only":
        (patient / f"report.{bad[:bad.index('-')]}").mkdir()
        code, out, err = cli(capsys, "report", patient, "--pdf")
        assert code == 2 and err.count("\n") == 1, err
        assert f"report.{bad[:bad.index('-')]}: is a folder, expected a file name" in err and not out
    else:
        if os.geteuid() == 0 and shutil.which("setpriv") is None:
            pytest.skip("root without setpriv: a read-only folder stays writable")
        unprivileged = ["setpriv", "--inh-caps=-dac_override,-dac_read_search",
                        "--bounding-set=-dac_override,-dac_read_search", "--"] if os.geteuid() == 0 else []
        patient.chmod(0o555)
        env = {"PYTHONPATH": str(Path(__file__).parents[1] / "src"), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
        try:
            done = subprocess.run(unprivileged + [sys.executable, "-m", "micromets", "report", str(patient),
                                                  "--no-pdf"], capture_output=True, text=True, env=env, timeout=120)
        finally:
            patient.chmod(0o755)
        assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
        assert "report.html: not writable" in done.stderr and "Traceback" not in done.stderr
    assert not (patient / "report.html.part").exists() and not (patient / "report.html").is_file()
