"""The batch's scale-out, measured: the same slides analysed with 1, 2, … Dask workers in one run.

`measure_speedup` runs `micromets.batch.run.run_batch` once per worker count on the same slide list (each into a
fresh output folder, so nothing is skipped) and reports for each: wall seconds of the whole run, seconds of
compute (from the LocalCluster being up to the last slide committed, i.e. without cluster start-up), slides per
minute, and the speed-up of both against the first worker count. onnxruntime gets the same number of threads per
worker in every run (`threads_per_worker`, default 1), so the ratio measures process scale-out and not thread
scale-up. The machine's load average before and after is recorded, and the CPU seconds the workers consumed
(``worker_cpu_s``; ``cores_used`` = that ÷ compute seconds, ideally the worker count): on a shared machine
``cores_used`` shows how much of the cores the batch actually got, and the speed-up is a lower bound of what idle
cores would give. ``cpu_work_ratio`` (CPU seconds of this run ÷ those of the first) is the extra work scale-out
costs (worker start-up, imports, one model load per worker), and ``speedup_if_one_core_per_worker`` = worker ratio
÷ ``cpu_work_ratio`` is the speed-up the same work would reach if every worker had a core of its own: an estimate,
not a measurement, to read beside the measured one when the machine is shared. ``client_cpu_s`` is the CPU of this
process during the run (planning, the LocalCluster's scheduler and nannies, the Dask client, the results store).
``worker_threads`` splits each worker process's CPU (read every 0.5 s with psutil, so a process's last half-second
is missed; the reading costs ≈ 0.5 % of a core, left out of ``client_cpu_s``) into its busiest thread — with one thread per worker, the one that analyses the slides — and its other
threads (Dask's event loop: worker start-up, heartbeats, health checks, profiler if enabled).

Before the first timed run the client pays its one-time costs (importing Dask, loading the model once), which the
later runs would not pay: every run then starts alike.
"""

import os
import resource
import shutil
import statistics
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil

from micromets.batch.run import model_identity, run_batch
from micromets.errors import MicrometsError
from micromets.words import counted


def _cpu_s(who: int) -> float:
    """User + system CPU seconds of this process (`resource.RUSAGE_SELF`) or of its finished child processes
    (`resource.RUSAGE_CHILDREN`: the LocalCluster's workers)."""
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


@contextmanager
def _worker_threads_cpu(interval_s: float = 0.5) -> Iterator[dict]:
    """While the block runs, read every `interval_s` the CPU seconds of every thread of the spawned worker
    processes below this one. Yields ``{"per_process": {pid: {thread id: s}}, "sampler_cpu_s": s}``, filled in as
    it goes (last reading of each thread, also of threads that have ended since) and complete after the block;
    ``sampler_cpu_s`` is the sampler's own CPU, spent in this process."""
    readings: dict[int, dict[int, float]] = {}
    stats = {"per_process": readings, "sampler_cpu_s": 0.0}
    stop = threading.Event()

    def sample() -> None:
        me, spawned = psutil.Process(), {}
        while not stop.wait(interval_s):
            for proc in me.children(recursive=True):
                try:
                    if spawned.setdefault(proc.pid, "spawn_main" in " ".join(proc.cmdline())):
                        readings.setdefault(proc.pid, {}).update(
                            (t.id, t.user_time + t.system_time) for t in proc.threads())  # keeps exited threads
                except psutil.Error:  # it exited meanwhile
                    continue
        stats["sampler_cpu_s"] = time.thread_time()

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield stats
    finally:
        stop.set()
        sampler.join()


def _timed_run(slides: list, out: Path, workers: int, threads_per_worker: int, model_dir: str | None) -> dict:
    """One `run_batch` of `slides` into a fresh `out` with `workers` workers, timed (see the module docstring)."""
    shutil.rmtree(out, ignore_errors=True)
    started = time.perf_counter()
    cpu_before, client_before = _cpu_s(resource.RUSAGE_CHILDREN), _cpu_s(resource.RUSAGE_SELF)
    with _worker_threads_cpu() as threads:
        summary = run_batch(slides, out, workers=workers, threads=threads_per_worker, model_dir=model_dir,
                            timeout_s=None)
        wall_s = time.perf_counter() - started
    cpu_s = _cpu_s(resource.RUSAGE_CHILDREN) - cpu_before
    client_cpu_s = _cpu_s(resource.RUSAGE_SELF) - client_before - threads["sampler_cpu_s"]
    worker_threads = [{"busiest_thread_cpu_s": round(max(per_thread.values()), 2),
                       "other_threads_cpu_s": round(sum(per_thread.values()) - max(per_thread.values()), 2)}
                      for per_thread in threads["per_process"].values()]
    if summary.n_failed or summary.n_done != len(slides):
        errors = [r.get("error") for r in summary.rows if r["status"] == "failed"]
        raise MicrometsError(f"speed-up run with {workers} workers: {counted(summary.n_failed, 'slide')} failed ({errors[:1]})")
    return {"workers": workers, "wall_s": round(wall_s, 3), "compute_s": round(summary.compute_s, 3),
            "slides_per_min": round(60 * len(slides) / summary.compute_s, 2), "worker_cpu_s": round(cpu_s, 2),
            "cores_used": round(cpu_s / summary.compute_s, 2), "client_cpu_s": round(client_cpu_s, 2),
            "worker_threads": worker_threads}


def measure_speedup(slides: list[str | os.PathLike], work_dir: str | os.PathLike,
                    worker_counts: tuple[int, ...] = (1, 2), threads_per_worker: int = 1,
                    model_dir: str | None = None, rounds: int = 1) -> dict:
    """Analyse `slides` once per entry of `worker_counts` (Dask LocalCluster processes), `rounds` times, and return
    the timings (see the module docstring). Raises `MicrometsError` if any slide fails: a speed-up over failures
    means nothing.

    Each round runs every worker count once, in the given order in even rounds and reversed in odd ones, so that
    a machine whose speed drifts over minutes (a shared VM: the same slides alone took 13.4–15.0 CPU s in four
    runs here) favours neither count; speed-ups are taken within a round, against the round's run with
    ``worker_counts[0]``, and the report gives each round's and their median (``speedup_wall_median``,
    ``speedup_compute_median``, per worker count).
    """
    work_dir = Path(work_dir)
    for path in slides:  # warm the page cache so that the first run does not pay the disk reads alone
        with open(path, "rb") as fh:
            while fh.read(1 << 24):
                pass
    import distributed  # noqa: F401  (imported once here, not inside the first timed run only)

    model_identity(model_dir)
    load_before = os.getloadavg()
    runs = []
    for round_ in range(rounds):
        order = worker_counts if round_ % 2 == 0 else worker_counts[::-1]
        timed = {workers: _timed_run(slides, work_dir / f"workers-{workers}", workers, threads_per_worker, model_dir)
                 for workers in order}
        base = timed[worker_counts[0]]
        for workers in worker_counts:
            run = timed[workers]
            run["round"] = round_
            run["speedup_wall"] = round(base["wall_s"] / run["wall_s"], 3)
            run["speedup_compute"] = round(base["compute_s"] / run["compute_s"], 3)
            run["cpu_work_ratio"] = round(run["worker_cpu_s"] / base["worker_cpu_s"], 3)
            run["speedup_if_one_core_per_worker"] = round(
                run["workers"] / base["workers"] / run["cpu_work_ratio"], 3)
            runs.append(run)
    medians = {key: {str(w): round(statistics.median(r[key] for r in runs if r["workers"] == w), 3)
                     for w in worker_counts} for key in ("speedup_wall", "speedup_compute")}
    return {"n_slides": len(slides), "cpu_count": os.cpu_count(), "threads_per_worker": threads_per_worker,
            "rounds": rounds, "load_avg_1min_before": round(load_before[0], 2),
            "load_avg_1min_after": round(os.getloadavg()[0], 2), "runs": runs,
            "speedup_wall_median": medians["speedup_wall"], "speedup_compute_median": medians["speedup_compute"]}
