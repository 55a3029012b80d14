"""The package as a user installs it: a wheel built from the repository, installed in a fresh virtual environment,
runs `micromets demo` from an unrelated folder (models, templates, schemas, viewer assets and the demo case are
package data). Nothing is downloaded: the wheel is built without build isolation and installed without its
dependencies, which the fresh environment borrows from the running one."""

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_wheel_installs_a_working_micromets_that_runs_the_demo_anywhere(tmp_path):
    source = tmp_path / "source"  # build from a copy: setuptools writes build/ and *.egg-info beside pyproject.toml
    shutil.copytree(REPO / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # only the installed wheel may be seen
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    subprocess.run([*pip, "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index", "-w",
                    str(tmp_path / "dist"), str(source)], check=True, capture_output=True, timeout=300, env=env)
    wheel = next((tmp_path / "dist").glob("micromets-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    for part in ("micromets/models/default/model.json", "micromets/data/demo/expected.json",
                 "micromets/data/demo/slides/node2.tiff", "micromets/schemas/case.schema.json",
                 "micromets/viewer/static/"):
        assert any(name.startswith(part) for name in names), part
    vendor = REPO / "src" / "micromets" / "viewer" / "static" / "vendor" / "openseadragon" / "openseadragon.min.js"
    if vendor.exists():  # fetched by `make viewer-assets` (git-ignored): shipped in the wheel when present
        assert "micromets/viewer/static/vendor/openseadragon/openseadragon.min.js" in names

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    subprocess.run([*pip, "--python", str(python), "install", "-q", "--no-deps", "--no-index", str(wheel)],
                   check=True, capture_output=True, timeout=300, env=env)
    # The dependencies come from the running environment (appended to sys.path, so the wheel's micromets wins
    # over any editable install there: .pth files inside an appended folder are not processed).
    site = Path(subprocess.check_output([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                        text=True).strip())
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")

    where = subprocess.check_output([python, "-c", "import micromets; print(micromets.__file__)"], env=env,
                                    cwd=tmp_path, text=True)
    assert Path(where.strip()).is_relative_to(venv), where
    work = tmp_path / "elsewhere"
    work.mkdir()
    done = subprocess.run([str(venv / "bin" / "micromets"), "demo"], cwd=work, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert ": MATCHES" in done.stdout, done.stdout
    assert (work / "demo-out" / "demo_patient" / "report.html").is_file()
