"""Property-based fuzz of the command line (issue 16): every entry point, run as a real subprocess with random
option values and hostile files (random bytes, huge headers, FIFOs, symlink loops, links out, folders).

Asserted for every run: exit code 0 or 2, no traceback on stderr, finished within ``TIMEOUT_S`` (never a hang),
and no file created or changed outside the run's output folder. The fast form (a few examples per command) runs in
the normal suite; the long form is marked slow (``make stress``).

``view``, ``bench``, ``train`` and ``demo`` are left out: the first serves until stopped, the others run for
minutes by design; their options are checked by their own tests.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

REPO = Path(__file__).resolve().parents[1]
TIMEOUT_S = 60

NUMBERS = st.sampled_from(["nan", "inf", "-inf", "-1", "0", "1e300", "0.5", "2", "1e-300", "abc", ""])
WORDS = st.sampled_from(["", "x", "weird", "micro", "he", "ihc", "a,b", "\u00e9\u00e8", "'", "--", "-1"])
KINDS = ("bytes", "huge_header", "fifo", "loop", "link_out", "folder", "missing", "empty")


def _make(kind: str, where: Path, name: str, data: bytes) -> Path:
    path = where / name
    if kind == "bytes":
        path.write_bytes(data)
    elif kind == "huge_header":
        path.write_bytes(b",".join([b"patient", b"node", b"slide_path"] + [b"c%d" % i for i in range(200_000)])
                         + b"\n" + data)
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "loop":
        path.symlink_to(path)
    elif kind == "link_out":
        path.symlink_to("/etc/hostname")
    elif kind == "folder":
        path.mkdir()
    elif kind == "empty":
        path.write_bytes(b"")
    return path


# Each command: its arguments from the hostile input ``inp`` (a path), a folder ``d`` of such files, the output
# ``out`` (inside the run's output folder) and random option values.
COMMANDS = {
    "analyze": lambda inp, d, out, n, w: ["analyze", str(inp), "--out", str(out), "--mpp", n, "--threshold", n],
    "case": lambda inp, d, out, n, w: ["case", str(inp), "--out", str(out), "--rule", w],
    "batch": lambda inp, d, out, n, w: ["batch", str(d), "--out", str(out), "--mpp", n, "--identity", w],
    "measure": lambda inp, d, out, n, w: ["measure", str(inp), "--mpp", n, "--gap-um", n, "--out", str(out)],
    "stage": lambda inp, d, out, n, w: ["stage", str(inp), "--rule", w, "--out", str(out)],
    "score-tiles": lambda inp, d, out, n, w: ["score-tiles", str(d), "--mpp", n, "--out", str(out)],
    "phantom": lambda inp, d, out, n, w: ["phantom", "--normal-tiles", str(d), "--tumour-tiles", str(d),
                                          "--tiles-mpp", n, "--lesions", w, "--size-mm", f"{n},{n}",
                                          "--out", str(out)],
    "report": lambda inp, d, out, n, w: ["report", str(d), "--no-pdf"],
    "results": lambda inp, d, out, n, w: ["results", "--db", str(inp), "--class", w, "--min-probability", n,
                                          "--out", str(out)],
    "threshold": lambda inp, d, out, n, w: ["threshold", "--db", str(inp), "--labels", str(inp),
                                            "--target-sensitivity", n],
    "evaluate camelyon16": lambda inp, d, out, n, w: ["evaluate", "camelyon16", str(d), str(d), "--mpp", n,
                                                      "--out", str(out)],
    "evaluate camelyon17": lambda inp, d, out, n, w: ["evaluate", "camelyon17", str(inp), str(inp),
                                                      "--out", str(out)],
}

#: Kinds of input each command is fuzzed with in the fast form (the long form uses all of ``KINDS``).
#: Left out here, found by this fuzz and owned by the "tracebacks and wrong exit codes" part of issue 16:
#: none of the kinds below fails today; option values are random in both forms.
FAST_KINDS = KINDS


def _snapshot(root: Path, skip: Path) -> dict[str, tuple]:
    seen = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        if Path(dirpath) == skip or skip in Path(dirpath).parents:
            dirnames[:] = []
            continue
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            if p == skip:  # the output folder's own entry changes when the command writes in it
                continue
            st_ = p.lstat()
            seen[str(p)] = (st_.st_mode, st_.st_size, st_.st_mtime_ns)
    return seen


def _run_one(tmp: Path, command: str, kind: str, data: bytes, number: str, word: str) -> None:
    run_dir = tmp / f"run{len(list(tmp.iterdir()))}"
    inputs = run_dir / "in"
    out_root = run_dir / "out"
    inputs.mkdir(parents=True)
    out_root.mkdir()
    suffix = {"case": ".csv", "stage": ".csv", "measure": ".geojson", "evaluate camelyon17": ".csv",
              "results": ".sqlite", "threshold": ".csv"}.get(command, ".tiff")
    inp = _make(kind, inputs, "x" + suffix, data)
    _make(kind, inputs, "y.png" if command == "score-tiles" else "y.csv", data)
    out = out_root / ("o.csv" if command in ("measure", "stage", "score-tiles", "results") else
                      "o.json" if command.startswith("evaluate") else "o.tiff" if command == "phantom" else "o")
    args = COMMANDS[command](inp, inputs, out, number, word)
    before = _snapshot(run_dir, out_root)
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"), HOME=str(run_dir / "out"))
    try:
        done = subprocess.run([sys.executable, "-m", "micromets", *args], capture_output=True, text=True,
                              env=env, cwd=out_root, timeout=TIMEOUT_S, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        pytest.fail(f"hang: micromets {' '.join(args)} ran over {TIMEOUT_S} s ({kind} input)")
    where = f"micromets {' '.join(args)} ({kind} input): exit {done.returncode}\n{done.stderr[-2000:]}"
    assert done.returncode in (0, 2), where
    assert "Traceback" not in done.stderr, where
    assert _snapshot(run_dir, out_root) == before, "wrote outside --out: " + where


def _fuzz(command: str, kinds, max_examples: int):
    @settings(max_examples=max_examples, deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
    @given(kind=st.sampled_from(kinds), data=st.binary(max_size=256), number=NUMBERS, word=WORDS)
    def run(tmp_path, kind, data, number, word):
        _run_one(tmp_path, command, kind, data, number, word)

    return run


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_cli_fuzz_fast(command, tmp_path):
    _fuzz(command, FAST_KINDS, 3)(tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_cli_fuzz_long(command, tmp_path):
    _fuzz(command, KINDS, 60)(tmp_path)


@pytest.mark.parametrize("target, long_form", [("stress", True), ("test", False)])
def test_make_stress_runs_the_long_fuzz_and_make_test_the_fast_one(target, long_form):
    """The pytest line of the Makefile target, run as written (collection only) on this file."""
    lines = (REPO / "Makefile").read_text().splitlines()
    recipe = lines[next(i for i, line in enumerate(lines) if line.startswith(f"{target}:")) + 1].split()
    assert recipe[:3] == ["$(BIN)/python", "-m", "pytest"], recipe
    args = [a for a in recipe[3:] if a != "tests"]
    if "-n" in args:  # the worker count (pytest-xdist) is a Make variable; collect in this process
        del args[args.index("-n"):args.index("-n") + 2]
    args += ["--collect-only", str(Path(__file__))]
    done = subprocess.run([sys.executable, "-m", "pytest", *args], capture_output=True, text=True, cwd=REPO,
                          timeout=120)
    assert done.returncode == 0, done.stdout[-2000:]
    assert ("test_cli_fuzz_long[" in done.stdout) == long_form
    assert ("test_cli_fuzz_fast[" in done.stdout) != long_form
