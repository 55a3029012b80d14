"""Issue 16: nothing lost, nothing silently wrong. Each test runs the real command line (`micromets.cli.main`) on
real slides and files, and failed on the code before the fix."""

import hashlib
import json
import re
import shutil
import sys
from pathlib import Path

import pytest

from micromets.cli import main
from test_batch import make_slides


def cli(capsys, *args) -> tuple[int, str, str]:
    """Run `micromets ARGS` in this process as a user does; returns (exit code, stdout, stderr)."""
    argv = sys.argv
    sys.argv = ["micromets", *map(str, args)]
    try:
        main()
        code = 0
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else 1
    finally:
        sys.argv = argv
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def same_name_slides(tmp_path_factory, shared_data) -> list[Path]:
    """Two different real-tissue slides, both called n1.tif, in folders a/ and b/."""
    root = tmp_path_factory.mktemp("same-name")
    made = make_slides(root / "made", shared_data, 2)
    pair = []
    for folder, slide in zip("ab", made):
        (root / folder).mkdir()
        pair.append(Path(shutil.copy(slide, root / folder / "n1.tif")))
    return pair


def test_analyze_gives_same_named_slides_their_own_folders(tmp_path, capsys, same_name_slides):
    out = tmp_path / "out"
    code, _, err = cli(capsys, "analyze", *same_name_slides, "--out", out)
    assert code == 0, err
    recorded = {f.name: json.loads((f / "result.json").read_text())["path"] for f in out.iterdir() if f.is_dir()}
    digest = hashlib.sha256(str(same_name_slides[1].resolve()).encode()).hexdigest()[:8]
    assert recorded == {"n1": str(same_name_slides[0].resolve()), f"n1~{digest}": str(same_name_slides[1].resolve())}
    # the second file alone again: it replaces its own folder, never the first file's
    assert cli(capsys, "analyze", same_name_slides[1], "--out", out)[0] == 0
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["n1", f"n1~{digest}"]
    assert json.loads((out / "n1" / "result.json").read_text())["path"] == str(same_name_slides[0].resolve())


def test_case_with_same_named_slides_and_a_failed_one_is_provisional(tmp_path, capsys, same_name_slides):
    manifest = tmp_path / "manifest.csv"
    manifest.write_text(f"patient,node,slide_path\np,1,{same_name_slides[0]}\np,2,{same_name_slides[1]}\n"
                        f"p,3,{tmp_path / 'missing.tif'}\n")
    code, _, err = cli(capsys, "case", manifest, "--out", tmp_path / "out")
    assert code == 2, err
    assert "(provisional)" in err and "(1 slide could not be analysed, node 3 not staged)" in err
    case = json.loads((tmp_path / "out" / "p" / "case.json").read_text())
    assert not case["complete"] and case["stage_reason"].startswith("provisional")
    folders = [n["slides"][0] for n in case["nodes"]]
    assert folders[0] == "n1" and folders[1].startswith("n1~")
    html = (tmp_path / "out" / "p" / "report.html").read_text()
    assert "PROVISIONAL" in html
    for slide in same_name_slides:  # both slides' SHA-256 in the provenance table
        assert hashlib.sha256(slide.read_bytes()).hexdigest() in html


@pytest.mark.parametrize("damage", ["missing", "invalid"])
def test_report_with_a_lost_slide_result_is_provisional_and_exits_2(tmp_path, capsys, demo_output, damage):
    patient = tmp_path / "demo_patient"
    shutil.copytree(demo_output / "demo_patient", patient)
    result = patient / "node2" / "result.json"
    if damage == "missing":
        result.unlink()
    else:
        result.write_text("{not json")
    code, out, err = cli(capsys, "report", patient, "--no-pdf")
    assert code == 2
    assert err.count("\n") == 1 and "node2/result.json" in err and "provisional" in err
    html = (patient / "report.html").read_text()
    assert "PROVISIONAL" in html and "deposits unknown" in html  # not "largest deposit x mm; 0 deposits"


@pytest.mark.parametrize("args", [
    ["analyze", "SLIDE", "--out", "OUT", "--threshold", "nan"],
    ["analyze", "SLIDE", "--out", "OUT", "--threshold", "2"],
    ["analyze", "SLIDE", "--out", "OUT", "--threshold", "-0.5"],
    ["analyze", "SLIDE", "--out", "OUT", "--mpp", "0"],
    ["analyze", "SLIDE", "--out", "OUT", "--gap-um", "inf"],
    ["analyze", "SLIDE", "--out", "OUT", "--stain", "pas"],
    ["batch", "SLIDE", "--out", "OUT", "--threshold", "nan"],
    ["batch", "SLIDE", "--out", "OUT", "--identity", "weird"],
    ["batch", "SLIDE", "--out", "OUT", "--slide-timeout-s", "nan"],
    ["measure", "SLIDE", "--mpp", "nan"],
    ["evaluate", "camelyon16", "OUT", "OUT", "--mpp", "-1"],
    ["results", "--db", "DB", "--class", "macr"],
    ["results", "--db", "DB", "--status", "weird"],
    ["results", "--db", "DB", "--min-probability", "nan"],
    ["threshold", "--db", "DB", "--labels", "SLIDE", "--target-sensitivity", "0"],
    ["score-tiles", "OUT", "--mpp", "nan", "--out", "OUT/x.csv"],
    ["view", "OUT", "--port", "99999"],
    ["phantom", "--normal-tiles", "OUT", "--tumour-tiles", "OUT", "--tiles-mpp", "0.243", "--lesions", "none",
     "--size-mm", "1e6,1e6", "--out", "OUT"],
])
def test_bad_option_values_are_refused_before_any_work(tmp_path, capsys, same_name_slides, args):
    out = tmp_path / "out"
    out.mkdir()
    names = {"SLIDE": same_name_slides[0], "OUT": out, "DB": tmp_path / "none.sqlite"}
    code, stdout, err = cli(capsys, *[names.get(a, a) for a in args])
    assert code == 2, (stdout, err)
    assert err.startswith("micromets: error: ") and err.count("\n") == 1, err
    assert not any(out.iterdir())  # nothing written, no .part left


@pytest.mark.parametrize("bad", ["file", "proc"])
@pytest.mark.parametrize("args", [
    ["analyze", "SLIDE", "--out", "DIR"],
    ["case", "MANIFEST", "--out", "DIR"],
    ["batch", "SLIDE", "--out", "DIR"],
    ["phantom", "--normal-tiles", "X", "--tumour-tiles", "X", "--tiles-mpp", "0.243", "--lesions", "none",
     "--size-mm", "1,1", "--out", "DIR"],
    ["measure", "XML", "--mpp", "0.243", "--out", "FILE"],
    ["stage", "STAGES", "--out", "FILE"],
    ["evaluate", "camelyon17", "STAGES", "STAGES", "--out", "FILE"],
    ["results", "--db", "X", "--out", "FILE"],
    ["results", "--db", "X", "--output", "FILE"],  # the old spelling, still checked the same way
    ["score-tiles", "X", "--mpp", "0.243", "--out", "FILE"],
])
def test_unwritable_output_paths_are_refused_before_the_work(tmp_path, capsys, same_name_slides, args, bad):
    """An output folder that is a file or an output file that is a folder, or anything under /proc: one line,
    exit 2, before the work."""
    a_file, a_folder = tmp_path / "a-file", tmp_path / "a-folder"
    a_file.write_text("keep")
    a_folder.mkdir()
    stages = tmp_path / "stages.csv"
    stages.write_text("patient,stage\npatient_000.zip,pN0\npatient_000_node_0.tif,negative\n")
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"patient,node,slide_path\np,1,{same_name_slides[0]}\n")
    names = {"SLIDE": same_name_slides[0], "MANIFEST": manifest, "STAGES": stages, "X": tmp_path,
             "XML": Path(__file__).parents[1] / "demo" / "slides" / "node2.xml",
             "DIR": a_file if bad == "file" else "/proc/micromets-out",
             "FILE": a_folder if bad == "file" else "/proc/micromets-out.csv"}
    code, _, err = cli(capsys, *[names.get(a, a) for a in args])
    assert code == 2 and err.count("\n") == 1 and ("--out " in err or "--output " in err), err
    assert a_file.read_text() == "keep" and not any(a_folder.iterdir())


def test_duplicates_are_errors_naming_both_lines(tmp_path, capsys):
    nodes = tmp_path / "nodes.csv"
    nodes.write_text("patient,stage\npatient_100_node_0.tif,macro\npatient_100_node_0.tif,negative\n")
    code, _, err = cli(capsys, "stage", nodes)
    assert code == 2 and "lines 2 and 3" in err and "patient_100_node_0.tif" in err
    reference = tmp_path / "ref.csv"
    reference.write_text("patient,stage\npatient_100.zip,pN1\npatient_100.zip,pN0\n")
    code, _, err = cli(capsys, "evaluate", "camelyon17", reference, reference)
    assert code == 2 and "lines 2 and 3" in err
    manifest = tmp_path / "m.csv"
    manifest.write_text("patient,node,slide_path,node\np,1,a.tif,2\n")
    code, _, err = cli(capsys, "case", manifest, "--out", tmp_path / "out")
    assert code == 2 and "node given twice in the header" in err


def test_case_manifest_with_a_huge_header_is_refused_at_once(tmp_path, capsys):
    """200,000 header columns ran over 2 minutes (a quadratic duplicate check; found by the CLI fuzz)."""
    import time

    manifest = tmp_path / "m.csv"
    manifest.write_text(",".join(["patient", "node", "slide_path"] + [f"c{i}" for i in range(200_000)]) + "\n")
    start = time.monotonic()
    code, _, err = cli(capsys, "case", manifest, "--out", tmp_path / "out")
    assert time.monotonic() - start < 10
    assert code == 2 and "unknown column(s) c0, c1" in err and "(200000 in all)" in err and len(err) < 300, err


def test_case_mode_is_checked_with_the_options(tmp_path, capsys):
    code, _, err = cli(capsys, "case", tmp_path / "missing.csv", "--out", tmp_path / "out", "--mode", "x")
    assert code == 2 and "--mode 'x': choose thorough, fast" in err, err
    code, _, err = cli(capsys, "case", tmp_path / "missing.csv", "--out", tmp_path / "out", "--rule", "x")
    assert code == 2 and "--rule 'x': choose camelyon17, ajcc8" in err, err


@pytest.mark.parametrize("command, new, old", [
    ("analyze", ["--out", "--mode"], ["--scan-mode", "--stage-mode", "--output", "--rule"]),
    ("case", ["--out", "--mode", "--rule"], ["--scan-mode", "--stage-mode", "--output"]),
    ("batch", ["--out", "--mode", "--rule"], ["--scan-mode", "--stage-mode", "--output"]),
    ("stage", ["--out", "--rule"], ["--mode", "--stage-mode", "--output"]),
    ("results", ["--out"], ["--output"]),
])
def test_help_shows_one_name_per_thing(capsys, command, new, old):
    """--out is the output everywhere, --mode the detector mode (thorough|fast), --rule the staging rule; the old
    spellings are accepted but not offered."""
    code, out, _ = cli(capsys, command, "--help")
    options = set(re.findall(r"(?<![\w-])--[a-z][a-z-]*", out))
    assert code == 0 and set(new) <= options and not set(old) & options, sorted(options)


def _patients_store(tmp_path: Path) -> Path:
    from micromets.batch.store import open_store

    db = tmp_path / "results.sqlite"
    with open_store(db) as store:
        store.record_case(1, "k", {"schema": "micromets.case/1", "patient": "p1", "stage_mode": "camelyon17",
                                   "pn_stage": "pN1mi", "stage_reason": "one micro", "nodes": [
                                       {"node": "1", "node_class": "micro", "decided_by": "slide n1 (he)",
                                        "largest_deposit_mm": 0.9, "osna_copies_per_ul": None, "slides": ["n1"]}]})
    return db


def test_old_option_spellings_give_the_same_result(tmp_path, capsys):
    nodes = tmp_path / "nodes.csv"
    nodes.write_text("patient,stage\npatient_100_node_0.tif,macro\npatient_100_node_1.tif,itc\n")
    for spelling in ("--rule", "--mode"):
        code, _, err = cli(capsys, "stage", nodes, spelling, "ajcc8", "--out", tmp_path / f"stage{spelling}.csv")
        assert code == 0, err
    assert (tmp_path / "stage--mode.csv").read_text() == (tmp_path / "stage--rule.csv").read_text()
    assert "patient_100.zip,pN1a(sn)" in (tmp_path / "stage--mode.csv").read_text()  # ajcc8, not camelyon17's pN1
    assert err.strip() == "micromets: note: --mode is now --rule"
    db = _patients_store(tmp_path)
    for spelling in ("--out", "--output"):
        code, _, err = cli(capsys, "results", "--db", db, "--level", "patients", "--format", "csv", spelling,
                           tmp_path / f"results{spelling}.csv")
        assert code == 0, err
    assert (tmp_path / "results--output.csv").read_text() == (tmp_path / "results--out.csv").read_text()
    assert "pN1mi" in (tmp_path / "results--out.csv").read_text()


def test_old_and_new_spelling_with_different_values_is_one_error(tmp_path, capsys):
    nodes = tmp_path / "nodes.csv"
    nodes.write_text("patient,stage\npatient_100_node_0.tif,macro\n")
    code, _, err = cli(capsys, "stage", nodes, "--mode", "camelyon17", "--rule", "ajcc8")
    assert code == 2 and err.count("\n") == 1 and "give --rule only" in err, err
    code, _, err = cli(capsys, "stage", nodes, "--mode", "x")
    assert code == 2 and "--mode 'x': choose camelyon17, ajcc8" in err, err


def test_stage_reads_a_utf8_bom(tmp_path, capsys):
    nodes = tmp_path / "nodes.csv"
    nodes.write_bytes(b"\xef\xbb\xbfpatient,stage\npatient_100_node_0.tif,macro\n")
    code, out, err = cli(capsys, "stage", nodes)
    assert code == 0 and "pN1" in out, err


def test_results_reads_without_writing_and_refuses_other_files(tmp_path, capsys, same_name_slides):
    import sqlite3
    import subprocess

    out = tmp_path / "batch"
    assert cli(capsys, "batch", same_name_slides[0], "--out", out, "-w", "0")[0] == 0
    empty, foreign = tmp_path / "empty.sqlite", tmp_path / "foreign.sqlite"
    empty.touch()
    with sqlite3.connect(foreign) as db:
        db.execute("CREATE TABLE notes (text TEXT)")
    for path in (empty, foreign):
        before = path.read_bytes()
        code, _, err = cli(capsys, "results", "--db", path)
        assert code == 2 and err.count("\n") == 1 and "not a micromets results store" in err, err
        assert path.read_bytes() == before  # no micromets tables written into it
    store = tmp_path / "ro" / "results.sqlite"
    store.parent.mkdir()
    shutil.copy(out / "results.sqlite", store)
    before = store.read_bytes()
    store.chmod(0o444)
    store.parent.chmod(0o555)
    unprivileged = ["setpriv", "--inh-caps=-dac_override,-dac_read_search",
                    "--bounding-set=-dac_override,-dac_read_search", "--"]
    if shutil.which("setpriv") is None:
        unprivileged = []
    env = {"PYTHONPATH": str(Path(__file__).parents[1] / "src"), "PATH": "/usr/bin:/bin"}
    proc = subprocess.run(unprivileged + [sys.executable, "-m", "micromets", "results", "--db", str(store),
                                          "--format", "csv"], capture_output=True, text=True, env=env, timeout=120)
    store.parent.chmod(0o755)
    assert proc.returncode == 0, proc.stderr
    assert "n1" in proc.stdout and store.read_bytes() == before
    assert sorted(p.name for p in store.parent.iterdir()) == ["results.sqlite"]


def test_analyze_names_link_loops_and_folders_and_keeps_the_good_slide(tmp_path, capsys, same_name_slides):
    (tmp_path / "l1").symlink_to(tmp_path / "l2")
    (tmp_path / "l2").symlink_to(tmp_path / "l1")
    (tmp_path / "folder.svs").mkdir()
    code, _, err = cli(capsys, "analyze", tmp_path / "l1", same_name_slides[0], tmp_path / "folder.svs",
                       "--out", tmp_path / "out")
    assert code == 2
    assert "l1: symbolic link to nothing (dangling, or a loop of links)" in err
    assert "folder.svs: is a folder, not a slide file" in err
    assert (tmp_path / "out" / "n1" / "result.json").is_file()


def test_measure_names_bad_files_and_still_writes_the_good_ones(tmp_path, capsys):
    huge = tmp_path / "huge.json"
    huge.write_text(json.dumps({"positive": [{"name": "a", "vertices": [[0, 0], [1e300, 0], [1e300, 1e300],
                                                                        [0, 1e300]]}]}))
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    good = Path(__file__).parents[1] / "demo" / "slides" / "node2.xml"
    table = tmp_path / "table.csv"
    code, _, err = cli(capsys, "measure", huge, deep, good, "--mpp", "0.243", "--out", table)
    assert code == 2
    assert f"{huge}: " in err and f"{deep}: JSON nested too deeply" in err
    assert table.read_text().splitlines()[1].startswith("node2,")


def test_case_manifest_with_an_unterminated_quote_says_so(tmp_path, capsys):
    manifest = tmp_path / "m.csv"
    manifest.write_text('patient,node,slide_path\np,1,"a.tif\np,2,b.tif\n')
    code, _, err = cli(capsys, "case", manifest, "--out", tmp_path / "out")
    assert code == 2 and "malformed CSV" in err and "unexpected end of data" in err, err


def test_view_on_a_busy_port_is_one_line(capsys, demo_output):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code, _, err = cli(capsys, "view", demo_output, "--port", port)
    errors = [line for line in err.splitlines() if not line.startswith("warning: OpenSeadragon missing")]
    assert code == 2 and len(errors) == 1 and "cannot listen there" in errors[0], err


def test_counts_are_printed_in_the_right_number(tmp_path, capsys):
    """ "1 patient", not "1 patients"; a failed slide of a case is "1 slide could not be analysed"."""
    from micromets.words import counted

    db = _patients_store(tmp_path)
    code, out, err = cli(capsys, "results", "--db", db, "--level", "patients")
    assert code == 0 and out.splitlines()[0].strip() == "1 patient", out
    code, out, err = cli(capsys, "results", "--db", db, "--level", "worklist")
    assert code == 0 and "worklist: 0 slides" in out, out
    assert [counted(n, "run") for n in (0, 1, 2)] == ["0 runs", "1 run", "2 runs"]
    assert counted(1, "patch", "patches") == "1 patch" and counted(3, "patch", "patches") == "3 patches"


def test_readme_lists_every_command_with_an_example():
    """The README's command table names every command `micromets --help` lists, each with an example that runs
    that command, and no command that does not exist."""
    import typer.main

    from micromets.cli import app

    commands = set(typer.main.get_command(app).commands)
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    rows = re.findall(r"^\| `([a-z-]+)` \| [^|]+ \| `micromets ([a-z-]+)[^`]*` \|$", readme, re.MULTILINE)
    assert {name for name, _ in rows} == commands and all(name == example for name, example in rows), rows
