"""Resumable batch over many slides: find inputs, skip what is done, analyse the rest, publish atomically.

One batch = one output folder ``OUT`` + one results store (`micromets.batch.store`). For every slide:

1. its content id is computed (`micromets.batch.ident`); (content id, settings key) is the slide's key, the
   settings key hashing the model name and version, the mode and the µm/px and stain overrides;
2. a key already ``done`` in the store whose ``result.json`` is on disk is skipped (``force=True`` recomputes);
3. the slide is analysed (`micromets.analyze.analyze_slide`) into a private staging folder
   ``OUT/.staging/<run>/<n>/`` — in this process, or as one Dask task per slide on a `LocalCluster` of
   ``workers`` processes or on an existing cluster at ``scheduler``;
4. the client (this process, the only writer of the store) moves the finished folder into place with
   ``rename`` (``OUT/<slide_id>/``; an earlier version of the folder is first renamed into ``OUT/.trash/``) and
   then commits the slide row and its lesions in one transaction. A slide of a case manifest is published to
   ``OUT/<patient>/<slide_id>/`` and each patient gets ``OUT/<patient>/case.json`` (`micromets.case.write_case`),
   so `micromets report` and `micromets view` read a batch's cases as they read `micromets case` output.

A process killed at any moment therefore leaves: complete published folders, possibly one published folder
whose row was not committed yet (recomputed and replaced on rerun), staging and trash leftovers (hidden, deleted
on the next run) and a consistent store. Rerunning yields exactly one complete result per slide.

A bad input (unreadable, not a slide, no resolution, a directory named like a slide, a FIFO …) becomes a
``failed`` row with its one-line reason; a Dask worker that dies on a slide (crash, out of memory) fails only
that slide. Only problems of the batch itself (output folder not writable, disk full, store unusable, another
batch holding ``OUT``) stop the run, with `MicrometsError`; everything committed before stays.

Slides go to the executor largest file first, so that on N workers the long slides start early and the short ones
fill the tail. The LocalCluster a batch starts runs with `BATCH_DASK_CONFIG` (no profiler, slower health checks, a
worker gets its next slide only when free): a worker then spends its core on the slide and not on Dask's
bookkeeping.

With ``scheduler=`` the workers must see the slides and ``OUT`` at the same paths (a shared file system); that
cluster keeps its own Dask configuration (to the same effect, start its scheduler and workers with the environment
variables ``DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED=False``, ``DASK_DISTRIBUTED__ADMIN__TICK__INTERVAL=500ms``,
``DASK_DISTRIBUTED__WORKER__MEMORY__MONITOR_INTERVAL=500ms`` and
``DASK_DISTRIBUTED__SCHEDULER__WORKER_SATURATION=1.0``).
"""

import ctypes
import fcntl
import glob
import hashlib
import json
import logging
import os
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from micromets import __version__
from micromets.batch.ident import slide_content_id
from micromets.batch.store import SqliteStore, open_store
from micromets.errors import MicrometsError
from micromets.folders import folder_name
from micromets.slide import DICOM_SUFFIX, slide_id_of

SLIDE_EXTENSIONS = (".svs", ".tif", ".tiff", ".ndpi", ".vms", ".vmu", ".scn", ".mrxs", ".svslide", ".bif")
"""File name endings (case-insensitive) that folder inputs collect: the formats OpenSlide 4 reads from one file.
A folder holding DICOM instances (`DICOM_SUFFIX`) is collected too, as one slide."""

SCHEDULER_CONNECT_TIMEOUT_S = 20
STAGING = ".staging"
TRASH = ".trash"
LOCK = ".micromets-batch.lock"

BATCH_DASK_CONFIG = {
    # The statistical profiler: every 10 ms each worker's event-loop thread takes the GIL and walks the running
    # slide's Python stack, for the dashboard's profile page (batch clusters serve no dashboard): ≈ 2.5 % of a core
    # per worker, the largest part of Dask's own 4 %, which with N workers on N cores comes off the slides.
    "distributed.worker.profile.enabled": False,
    # Event-loop health check of every Dask server (scheduler, nannies, workers), by default every 20 ms. A blocked
    # loop is still reported (after `distributed.admin.tick.limit`, 3 s); Dask's own cluster tests use 500 ms.
    "distributed.admin.tick.interval": "500ms",
    # How often a worker's memory is polled: by the worker (spill to disk / pause; a slide task holds no Dask data)
    # and by its nanny (terminate the worker above 95 % of its memory limit), by default every 100 ms.
    "distributed.worker.memory.monitor-interval": "500ms",
    # GIL contention sampled every 1 ms, by a thread that starts only if the `gilknocker` package is installed.
    "distributed.admin.system-monitor.gil.enabled": False,
    # A worker receives its next slide when it finishes one (by default ceil(1.1 × threads) tasks wait on each
    # worker: a slide could queue behind a long one while another worker idles at the end of the batch). With the
    # largest-first order this is greedy longest-first scheduling; the extra round trip is milliseconds per slide.
    "distributed.scheduler.worker-saturation": 1.0,
    # The environment a nanny gives the worker it spawns. Dask's default also sets MALLOC_TRIM_THRESHOLD_=65536,
    # which returns freed memory to the system at once; setting it switches off glibc's adaptive mmap threshold,
    # so every array above 128 KB (a slide's read blocks, patch batches, network inputs) is mmapped, page-faulted
    # and zeroed anew: +10-15 % CPU per slide (4 small slides in one process: 6.8-7.2 CPU s without, 7.6-7.7
    # with). A slide task holds no Dask data between tasks, so the trimming buys nothing here.
    "distributed.nanny.pre-spawn-environ": {"OMP_NUM_THREADS": 1, "MKL_NUM_THREADS": 1, "OPENBLAS_NUM_THREADS": 1},
}
"""Dask settings of the LocalCluster a batch starts (see `local_cluster`). Together they cut the CPU Dask itself
uses while slides run from ≈ 0.04 core per worker plus 0.04 in the client process (scheduler, nannies) to ≈ 0.006
per worker plus 0.011 (measured with 2 workers; bench/README.md, "Batch scale-out")."""


@dataclass(frozen=True)
class BatchInput:
    """One slide to analyse; `patient`/`node`/`stain`/`osna_copies_per_ul` come from a case manifest, where a
    node may also be listed with an OSNA value and no slide (`path` None)."""

    path: Path | None
    patient: str | None = None
    node: str | None = None
    stain: str | None = None
    osna_copies_per_ul: float | None = None


@dataclass(frozen=True)
class SlideJob:
    """Everything a worker needs to analyse one slide into `staging_dir` (plain data: travels to Dask workers)."""

    path: str
    content_id: str
    settings_key: str
    staging_dir: str
    mode: str
    mpp: float | None
    stain: str | None
    threshold: float | None
    gap_um: float
    model_dir: str | None
    threads: int
    timeout_s: float | None


@dataclass
class SlideOutcome:
    """What a worker returns: a result staged in `staged_dir`, or the one-line reason it failed."""

    job: SlideJob
    status: str  # "done" | "failed"
    result: dict | None = None
    staged_dir: str | None = None
    max_probability: float | None = None
    error: str | None = None
    elapsed_s: float = 0.0


@dataclass
class BatchSummary:
    """Counts and rows of one batch run (`rows`: one dict per input, in input order)."""

    run_id: int
    n_inputs: int
    n_done: int = 0
    n_failed: int = 0
    n_skipped: int = 0
    elapsed_s: float = 0.0  # whole run, wall clock
    compute_s: float = 0.0  # from the executor being ready (Dask cluster up) to the last slide committed (without
    # the cluster's shutdown)
    rows: list[dict] = field(default_factory=list)


ProgressCallback = Callable[[str, dict], None]
"""`on_event(kind, row)`: kind is "planned" (row has "total"), "done", "failed" or "skipped"."""


# ---- inputs ---------------------------------------------------------------------------------------------------


def _is_slide_name(name: str) -> bool:
    return name.lower().endswith(SLIDE_EXTENSIONS)


def _walk_folder(folder: Path) -> Iterator[Path]:
    """Slide-named entries under `folder`, recursively, sorted; a directory named like a slide is yielded too
    (it is reported as failed, not silently skipped), and a directory holding ``.dcm`` files is yielded once as a
    DICOM slide (its instance files are not slides of their own). Symbolic links to folders are not followed."""
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        if any(name.lower().endswith(DICOM_SUFFIX) for name in files):
            yield Path(root)
        for name in sorted(files) + [d for d in dirs if _is_slide_name(d)]:
            if _is_slide_name(name):
                yield Path(root) / name


def _manifest_inputs(path: Path) -> list[BatchInput]:
    from micromets.case import read_manifest

    return [BatchInput(path=row.slide_path, patient=row.patient, node=row.node, stain=row.stain,
                       osna_copies_per_ul=row.osna_copies_per_ul) for row in read_manifest(path)]


def discover_inputs(specs: list[str | os.PathLike]) -> list[BatchInput]:
    """Expand `specs` into inputs, in order, with absolute paths.

    A spec is a folder (searched recursively for `SLIDE_EXTENSIONS` and DICOM slide folders), a glob pattern
    (``*``, ``?``, ``[``; ``**`` recurses), a case manifest (``.csv``, see `micromets.case.read_manifest`), one
    slide file or one ``.dcm`` file (its DICOM slide folder). A spec that
    names nothing (missing path, empty folder, pattern without matches) raises `MicrometsError`. A path named
    twice stays twice (a manifest may list one slide under two nodes); the batch analyses it once.
    """
    found: list[BatchInput] = []
    for spec in specs:
        text = str(spec)
        path = Path(text)
        if path.is_dir() and not _is_slide_name(path.name):
            batch = [BatchInput(p) for p in _walk_folder(path)]
        elif path.suffix.lower() == DICOM_SUFFIX and path.is_file():
            batch = [BatchInput(path.parent)]  # one instance names its whole DICOM slide
        elif path.suffix.lower() == ".csv" and path.is_file():
            batch = _manifest_inputs(path)
        elif os.path.lexists(path):
            batch = [BatchInput(path)]
        elif glob.has_magic(text):
            batch = [BatchInput(Path(p)) for p in sorted(glob.glob(text, recursive=True)) if _is_slide_name(p)]
        else:
            raise MicrometsError(f"{text}: no such file, folder or pattern")
        if not batch:
            raise MicrometsError(f"{text}: contains no slide ({', '.join(SLIDE_EXTENSIONS)}, DICOM folder)")
        found.extend(batch)
    return [BatchInput(None if item.path is None else Path(os.path.abspath(item.path)), item.patient, item.node,
                       item.stain, item.osna_copies_per_ul) for item in found]


# ---- settings -------------------------------------------------------------------------------------------------


def model_identity(model_dir: str | None) -> tuple[str, str, dict]:
    """(name, version, card) of the model `analyze_slide` will use (card in `model_dir`, or the shipped default);
    loading it here also rejects a broken model before any slide is queued."""
    from micromets.model import Detector

    detector = Detector.load(model_dir, threads=1)
    return str(detector.name), str(detector.version), detector.card


def screen_identity() -> str:
    """``name version`` of the coarse screen model that ``fast`` mode uses."""
    from micromets.model import Detector, coarse_model_dir

    screen = Detector.load(coarse_model_dir(), threads=1)
    return f"{screen.name} {screen.version}"


def settings_key(settings: dict) -> str:
    """16-hex key of the settings that change a slide's result (model name/version, mode and, in fast mode, the
    screen model, µm/px, stain, threshold, grouping gap and lesion confirmation threshold)."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


# ---- the worker side ------------------------------------------------------------------------------------------


class SlideTimeout(BaseException):
    """Raised inside the analysing thread when a slide exceeds its time budget.

    A BaseException, as asyncio's CancelledError is: it is injected into whatever code runs at that moment, and
    an ``except Exception`` there (ours or a library's, e.g. a reader's fallback for corrupt tiles) must not turn
    it into an ordinary error or swallow it; `analyze_job` catches it by name."""


def call_with_timeout(fn: Callable[[], object], timeout_s: float | None):
    """``fn()``, interrupted by `SlideTimeout` after `timeout_s` seconds (None or 0: no limit).

    A timer thread raises the exception asynchronously in the calling thread (``PyThreadState_SetAsyncExc``), so
    this works in any thread, including Dask worker threads where signals cannot be used. The exception takes
    effect at the next Python instruction: a slide stuck in one long C call is interrupted when that call returns.
    """
    if not timeout_s:
        return fn()
    target = ctypes.c_ulong(threading.get_ident())
    lock = threading.Lock()
    running = [True]

    def fire() -> None:
        with lock:
            if running[0]:
                ctypes.pythonapi.PyThreadState_SetAsyncExc(target, ctypes.py_object(SlideTimeout))

    timer = threading.Timer(timeout_s, fire)
    timer.daemon = True
    timer.start()
    try:
        return fn()
    finally:
        with lock:
            running[0] = False
        timer.cancel()


@lru_cache(maxsize=2)
def _worker_detector(model_dir: str | None, threads: int):
    """The detector of this worker process, loaded once per model folder (ONNX session start is costly)."""
    from micromets.model import Detector

    return Detector.load(model_dir, threads=threads)


@lru_cache(maxsize=1)
def _worker_screen(threads: int):
    """The coarse screen of this worker process (fast mode), loaded once."""
    from micromets.model import Detector, coarse_model_dir

    return Detector.load(coarse_model_dir(), threads=threads)


def analyze_job(job: SlideJob) -> SlideOutcome:
    """Analyse one slide into ``job.staging_dir`` (runs in a Dask worker or in-process); never raises for a bad
    slide: the reason is returned in ``SlideOutcome.error``."""
    import numpy as np

    from micromets.analyze import analyze_slide

    t0 = time.perf_counter()
    try:
        detector = _worker_detector(job.model_dir, job.threads)
        screen = _worker_screen(job.threads) if job.mode == "fast" else None
        result = call_with_timeout(lambda: analyze_slide(
            job.path, job.staging_dir, mpp=job.mpp, mode=job.mode, stain=job.stain, threshold=job.threshold,
            gap_um=job.gap_um, detector=detector, readers=job.threads - 1, screen=screen), job.timeout_s)
        staged = Path(job.staging_dir) / str(result["slide_id"])
        if not (staged / "result.json").is_file():
            raise MicrometsError(f"{job.path}: analysis wrote no result.json")
        h_prob = np.load(staged / "heatmap.npy", mmap_mode="r")
        max_probability = float(h_prob.max()) if h_prob.size else 0.0
        return SlideOutcome(job, "done", result=result, staged_dir=str(staged), max_probability=max_probability,
                            elapsed_s=time.perf_counter() - t0)
    except MicrometsError as err:
        error = str(err)
    except SlideTimeout:
        error = f"{job.path}: timed out after {job.timeout_s:g} s (slide timeout)"
    except Exception as err:  # a bad slide must not stop the batch: report the unexpected failure, keep going
        error = f"{job.path}: internal error {type(err).__name__}: {err}"
    return SlideOutcome(job, "failed", error=error, elapsed_s=time.perf_counter() - t0)


# ---- the client side ------------------------------------------------------------------------------------------


@contextmanager
def _batch_lock(out: Path) -> Iterator[None]:
    """Create `out` and hold an exclusive lock on it for the whole run (two batches must not publish into one
    folder)."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        fh = open(out / LOCK, "a")
    except OSError as err:
        raise MicrometsError(f"{out}: output folder not writable ({err.strerror})") from err
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as err:
        fh.close()
        raise MicrometsError(f"{out}: another micromets batch is writing to this folder") from err
    try:
        yield
    finally:
        fh.close()


def _prepare_out(out: Path) -> None:
    """Remove staging/trash leftovers of killed runs (under the lock) and prove `out` is writable."""
    try:
        for leftover in (STAGING, TRASH):
            shutil.rmtree(out / leftover, ignore_errors=True)
        (out / STAGING).mkdir()
        probe = out / STAGING / "write-probe"
        probe.write_bytes(b"micromets")
        probe.unlink()
    except OSError as err:
        raise MicrometsError(f"{out}: output folder not writable ({err.strerror})") from err


def _publish(outcome: SlideOutcome, out: Path, folder: str) -> Path:
    """Move the staged folder to ``out/folder`` by rename; an existing folder there goes to the trash first."""
    target = out / folder
    target.parent.mkdir(parents=True, exist_ok=True)
    if os.path.lexists(target):
        trash = out / TRASH
        trash.mkdir(exist_ok=True)
        parked = trash / uuid.uuid4().hex
        os.rename(target, parked)
        os.rename(outcome.staged_dir, target)
        shutil.rmtree(parked, ignore_errors=True)
    else:
        os.rename(outcome.staged_dir, target)
    return target


def local_cluster(workers: int):
    """A started Dask `LocalCluster` of `workers` single-threaded worker processes, without dashboard, quiet
    logs, with `BATCH_DASK_CONFIG` (the nannies pass it on to the worker processes they spawn)."""
    import dask
    from distributed import LocalCluster

    with dask.config.set(BATCH_DASK_CONFIG):
        return LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                            silence_logs=logging.ERROR)


def _file_bytes(job: SlideJob) -> int:
    """Size of the slide's file (0 if it vanished since it was identified: its worker reports that)."""
    try:
        return os.stat(job.path).st_size
    except OSError:
        return 0


def _outcomes(jobs: list[SlideJob], workers: int, scheduler: str | None,
              timing: dict[str, float]) -> Iterator[SlideOutcome]:
    """Run `jobs`, largest file first, and yield outcomes as they finish: in-process (``workers == 0`` and no
    scheduler) or on Dask (which starts tasks in submission order). File size stands for the work (tissue
    compresses worse than glass); for MIRAX and VMS, whose pixels are in companion files, it undercounts.
    ``timing["ready"]`` is set to the `time.perf_counter` at which the executor is ready."""
    if not jobs:
        return
    jobs = sorted(jobs, key=_file_bytes, reverse=True)
    if workers == 0 and scheduler is None:
        timing["ready"] = time.perf_counter()
        yield from map(analyze_job, jobs)
        return
    from distributed import Client, as_completed

    if scheduler is not None:
        cluster = None
        try:
            client = Client(scheduler, timeout=f"{SCHEDULER_CONNECT_TIMEOUT_S}s")
        except OSError as err:
            raise MicrometsError(f"--scheduler {scheduler}: cannot connect ({err})") from err
    else:
        cluster = local_cluster(workers)
        client = Client(cluster)
    try:
        timing["ready"] = time.perf_counter()
        futures = client.map(analyze_job, jobs, pure=False)
        by_future = dict(zip(futures, jobs))
        for future in as_completed(futures):
            job = by_future.pop(future)
            try:
                yield future.result()
            except Exception as err:  # the worker died on this slide (crash, memory) or the task was lost
                reason = " ".join(str(err).split())[:200]
                yield SlideOutcome(job, "failed", error=f"{job.path}: the worker process analysing it died (crash, "
                                                        f"out of memory or killed; {type(err).__name__}: {reason})")
            finally:
                future.release()
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def _default_threads(workers: int) -> int:
    """Threads per worker: the machine's cores shared evenly among the local workers, so that N workers on N cores
    do not oversubscribe them. A worker runs inference in ``threads`` threads and reads tiles ahead in
    ``threads - 1`` more (with one thread it reads between batches: one worker, one core)."""
    return max(1, (os.cpu_count() or 1) // max(1, workers))


def run_batch(specs: list[str | os.PathLike], out: str | os.PathLike, db: str | os.PathLike | None = None, *,
              mode: str = "thorough", mpp: float | None = None, stain: str | None = None,
              threshold: float | None = None, gap_um: float | None = None, model_dir: str | None = None,
              identity: str = "quick", force: bool = False, workers: int = 0, scheduler: str | None = None,
              threads: int | None = None, timeout_s: float | None = 3600.0, stage_mode: str = "camelyon17",
              on_event: ProgressCallback | None = None) -> BatchSummary:
    """Analyse every slide named by `specs` into `out`, recording results in the store `db`
    (default ``out/results.sqlite``); see the module docstring for resume and atomicity.

    `workers` = 0 runs in this process; N > 0 starts a Dask LocalCluster of N single-threaded worker processes;
    `scheduler` (``tcp://host:port``) uses an existing Dask cluster instead. `threads` is the onnxruntime thread
    count of each worker (default: cores ÷ local workers). A slide still running after `timeout_s` seconds is
    interrupted and recorded as failed (None or 0: no limit; see `call_with_timeout`). `identity` is the content-id scheme
    (`micromets.batch.ident`). Slides from case manifests are also staged per node and patient (`stage_mode`
    ``camelyon17`` or ``ajcc8``) into the store's ``nodes`` and ``patients`` tables. Returns the run's
    `BatchSummary`.
    """
    from micromets.measure import DEFAULT_GAP_UM
    from micromets.patient import MODES

    t0 = time.perf_counter()
    if stage_mode not in MODES:
        raise MicrometsError(f"stage mode {stage_mode!r} unknown (choose one of {', '.join(MODES)})")
    if workers < 0:
        raise MicrometsError(f"--workers {workers}: must be 0 (in this process) or more")
    notify = on_event or (lambda kind, row: None)
    out = Path(out).absolute()
    inputs = discover_inputs(specs)
    slides: dict[Path, BatchInput] = {}
    for item in inputs:
        if item.path is not None:
            slides.setdefault(item.path, item)
    slides = list(slides.values())
    from micromets.analyze import lesion_thresholds

    model_name, model_version, card = model_identity(model_dir)
    base = {"model_name": model_name, "model_version": model_version, "mode": mode, "mpp": mpp,
            **({"screen": screen_identity()} if mode == "fast" else {}),
            "threshold": threshold, "gap_um": DEFAULT_GAP_UM if gap_um is None else float(gap_um),
            "confirm_threshold": lesion_thresholds(card, threshold)[2]}
    job_args = {"mode": mode, "mpp": mpp, "threshold": threshold, "gap_um": base["gap_um"], "model_dir": model_dir,
                "threads": threads or (1 if scheduler else _default_threads(workers)), "timeout_s": timeout_s}
    with _batch_lock(out), open_store(db if db is not None else out / "results.sqlite") as store:
        _prepare_out(out)
        run_settings = {**base, "stain": stain, "identity": identity, "model_dir": model_dir, "force": force}
        executor = f"dask:{scheduler}" if scheduler else (f"dask-local:{workers}" if workers else "in-process")
        run_key = settings_key({**base, "stain": stain})
        run_id = store.begin_run(run_settings, run_key, __version__, executor, len(slides))
        summary = BatchSummary(run_id=run_id, n_inputs=len(slides))
        staging = out / STAGING / f"run{run_id}"
        jobs, rows = _plan(slides, store, base, stain, identity, force, out, staging, job_args, run_id, summary,
                           notify)
        timing: dict[str, float] = {}
        for outcome in _outcomes(jobs, workers, scheduler, timing):
            _commit(outcome, store, out, run_id, rows[outcome.job.path], summary, notify)
            timing["committed"] = time.perf_counter()
        summary.compute_s = timing["committed"] - timing["ready"] if jobs else 0.0
        if any(item.patient is not None for item in inputs):
            _record_cases(inputs, rows, store, run_id, settings_key({**base, "stain": stain, "stage": stage_mode}),
                          stage_mode, out)
        store.finish_run(run_id, summary.n_done, summary.n_failed, summary.n_skipped)
        shutil.rmtree(staging, ignore_errors=True)
    summary.rows = [rows[str(item.path)] for item in slides]
    summary.elapsed_s = time.perf_counter() - t0
    return summary


def _folder_in(out: Path, out_dir: str) -> str:
    """A result folder's name relative to ``out`` (``<slide_id>``, or ``<patient>/<slide_id>`` for a manifest
    slide); a folder elsewhere (a store shared with another output folder) by its own name."""
    return os.path.relpath(out_dir, out) if Path(out_dir).is_relative_to(out) else Path(out_dir).name


def _plan(inputs: list[BatchInput], store: SqliteStore, base: dict, stain: str | None, identity: str, force: bool,
          out: Path, staging: Path, job_args: dict, run_id: int, summary: BatchSummary,
          notify: ProgressCallback) -> tuple[list[SlideJob], dict[str, dict]]:
    """Identify every input; record the unidentifiable as failed, skip the done, and return jobs for the rest."""
    done = store.done_results()
    owners = {_folder_in(out, info["out_dir"]): key for key, info in done.items()
              if Path(info["out_dir"]).is_relative_to(out)}
    by_path = {(info["path"], key[1]): _folder_in(out, info["out_dir"]) for key, info in done.items()}
    rows: dict[str, dict] = {}
    jobs: list[SlideJob] = []
    planned: dict[tuple[str, str], str] = {}
    notify("planned", {"total": len(inputs)})
    for n, item in enumerate(inputs):
        path = str(item.path)
        eff_stain = item.stain or stain
        skey = settings_key({**base, "stain": eff_stain})
        row = {"path": path, "slide_id": slide_id_of(item.path), "patient": item.patient, "node": item.node,
               "settings_key": skey}
        rows[path] = row
        try:
            cid = slide_content_id(item.path, identity)
        except MicrometsError as err:
            row.update(content_id=f"path:{path}", status="failed", error=str(err))
            store.record_failure(run_id, row["content_id"], skey, path, str(err), 0.0)
            summary.n_failed += 1
            notify("failed", row)
            continue
        key = (cid, skey)
        row["content_id"] = cid
        info = done.get(key)
        if key in planned:
            row.update(status="skipped", reason=f"same content as {planned[key]}")
        elif info is not None and not force and (Path(info["out_dir"]) / "result.json").is_file():
            row.update(status="skipped", reason="done before", out_dir=info["out_dir"])
            if info["path"] != path:
                store.touch_path(cid, skey, path)
        else:
            previous = Path(info["out_dir"]).name if info is not None else by_path.get((path, skey))
            stem = slide_id_of(item.path) if item.patient is None else f"{item.patient}/{slide_id_of(item.path)}"
            folder = folder_name(stem, key, owners, previous)
            owners[folder] = key
            row.update(status="queued", folder=folder)
            jobs.append(SlideJob(path=path, content_id=cid, settings_key=skey, staging_dir=str(staging / str(n)),
                                 stain=eff_stain, **job_args))
        planned.setdefault(key, path)
        if row["status"] == "skipped":
            summary.n_skipped += 1
            notify("skipped", row)
    return jobs, rows


def _commit(outcome: SlideOutcome, store: SqliteStore, out: Path, run_id: int, row: dict, summary: BatchSummary,
            notify: ProgressCallback) -> None:
    """Publish one finished slide (rename) and commit its row (one transaction)."""
    job = outcome.job
    if outcome.status == "done":
        try:
            target = _publish(outcome, out, row["folder"])
        except OSError as err:
            raise MicrometsError(f"{out}: cannot publish the result of {job.path} ({err.strerror})") from err
        store.record_result(run_id, job.content_id, job.settings_key, job.path, str(target), outcome.result,
                            outcome.max_probability, outcome.elapsed_s)
        row.update(status="done", out_dir=str(target), node_class=outcome.result.get("node_class"),
                   max_probability=outcome.max_probability, elapsed_s=outcome.elapsed_s)
        summary.n_done += 1
    else:
        store.record_failure(run_id, job.content_id, job.settings_key, job.path, outcome.error, outcome.elapsed_s)
        row.update(status="failed", error=outcome.error, elapsed_s=outcome.elapsed_s)
        summary.n_failed += 1
    notify(row["status"], row)


def _record_cases(inputs: list[BatchInput], rows: dict[str, dict], store: SqliteStore, run_id: int, case_key: str,
                  stage_mode: str, out: Path) -> None:
    """Stage every manifest patient from the stored slide results (`micromets.node`, `micromets.patient`), write
    its ``OUT/<patient>/case.json`` as `micromets case` does (so `micromets report` and `micromets view` read a
    batch's cases) and commit the same dict to the store (schema ``micromets.case/1``)."""
    from micromets.case import stage_case, write_case

    done = store.done_results()

    cases: dict[str, dict[str, list[BatchInput]]] = {}
    for item in inputs:
        if item.patient is not None:
            cases.setdefault(item.patient, {}).setdefault(item.node, []).append(item)
    for patient, nodes_of in cases.items():
        evidence, failed, slides_of_node = [], [], {}
        patient_dir = out / patient
        for node, items in nodes_of.items():
            results, slides_of_node[node] = [], []
            for item in items:
                if item.path is None:
                    continue
                row = rows[str(item.path)]
                result = store.result(row["content_id"], row["settings_key"])
                if result is None:
                    failed.append({"path": row["path"], "node": node, "error": row.get("error", "not analysed")})
                else:
                    results.append(result)
                    # the slide's folder: OUT/<patient>/<slide_id>, or elsewhere when it was done before or is
                    # shared with another patient (then named relative to the patient folder)
                    slides_of_node[node].append((os.path.relpath(
                        done[(row["content_id"], row["settings_key"])]["out_dir"], patient_dir), result))
            copies = next((i.osna_copies_per_ul for i in items if i.osna_copies_per_ul is not None), None)
            evidence.append((node, results, copies))
        case = stage_case(patient, evidence, failed, stage_mode)
        write_case(patient_dir, case, slides_of_node)
        store.record_case(run_id, case_key, case)
