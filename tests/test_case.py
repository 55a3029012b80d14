"""Case manifests: the documented columns, and one clear line for each kind of bad manifest."""

import pytest

from micromets.case import read_manifest
from micromets.errors import MicrometsError


def _write(tmp_path, text):
    path = tmp_path / "manifest.csv"
    path.write_text(text)
    return path


def test_manifest_with_optional_columns(tmp_path):
    rows = read_manifest(_write(tmp_path, "patient,node,slide_path,stain,osna_copies_per_ul\n"
                                          "p1,1,a.svs,he,\np1,1,b.svs,IHC,\np1,2,,,420\n"))
    assert [(r.node, r.stain, r.osna_copies_per_ul) for r in rows] == [("1", "he", None), ("1", "ihc", None),
                                                                      ("2", None, 420.0)]
    assert rows[0].slide_path == tmp_path / "a.svs"  # relative to the manifest
    assert rows[2].slide_path is None


@pytest.mark.parametrize("text, message", [
    ("patient,node,slide,extra\np,1,a.svs,x\n", "missing column"),
    ("patient,node,slide_path,colour\np,1,a.svs,red\n", "unknown column"),
    ("patient,node,slide_path,osna_copies_per_ul\np,1,a.svs,lots\n", "manifest.csv:2: osna_copies_per_ul 'lots' is not a number"),
    ("patient,node,slide_path,osna_copies_per_ul\np,1,a.svs,-5\n", ">= 0"),
    ("patient,node,slide_path,osna_copies_per_ul\np,1,a.svs,nan\n", "finite"),
    ("patient,node,slide_path,stain\np,1,a.svs,pas\n", "stain 'pas' is not he or ihc"),
    ("patient,node,slide_path\n", "no rows"),
    ("patient,node,slide_path\np,,a.svs\n", "must not be empty"),
    ("patient,node,slide_path\np,1,a.svs\np,1,a.svs\n", "listed twice"),
    ("patient,node,slide_path,osna_copies_per_ul\np,1,a.svs,300\np,1,b.svs,900\n", "two different OSNA values"),
    ("patient,node,slide_path\n../x,1,a.svs\n", "path separators"),
    ("patient,node,slide_path\np,1,a.svs,extra\n", "more fields than columns"),
])
def test_bad_manifests_give_one_clear_line(tmp_path, text, message):
    with pytest.raises(MicrometsError, match=message) as err:
        read_manifest(_write(tmp_path, text))
    assert "\n" not in str(err.value)


def test_missing_manifest(tmp_path):
    with pytest.raises(MicrometsError, match="no such manifest"):
        read_manifest(tmp_path / "nope.csv")


def test_case_shows_each_slide_progress_on_stderr(tmp_path):
    """While a slide is analysed `micromets case` draws its bar (patches scored / total) on stderr, as `analyze`
    does, then prints the slide's class; stdout stays for results. Run on a terminal (TTY_COMPATIBLE=1)."""
    import os
    import re
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    shutil.copy(repo / "src" / "micromets" / "data" / "demo" / "slides" / "node2.tiff", tmp_path / "node2.tiff")
    manifest = _write(tmp_path, "patient,node,slide_path\np1,2,node2.tiff\n")
    done = subprocess.run([sys.executable, "-m", "micromets", "case", str(manifest), "--out", str(tmp_path / "out"),
                           "--mode", "fast"], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, PYTHONPATH=str(repo / "src"), TTY_COMPATIBLE="1", COLUMNS="80"))
    assert done.returncode == 0, done.stderr
    bars = re.findall(r"patient p1 node 2: node2\.tiff[^\n\r]*?(\d+)/(\d+) patches", done.stderr)
    assert bars and all(int(a) <= int(b) for a, b in bars), done.stderr[-2000:]
    assert int(bars[-1][0]) > 0
    assert "patient p1 node 2: node2 → micro" in done.stderr and "patches" not in done.stdout
