"""Tile latency of the viewer under concurrent clients on loopback (the viewer part of ``micromets bench``).

:func:`tile_latency` serves a results directory with the real application (uvicorn in a background thread),
lets ``n_clients`` threads, each with its own HTTP connection, fetch Deep Zoom tiles as fast as they can, and
reports the 50th and 95th percentile of the request latency in ms. Each tile is first requested once ("cold":
decoded from the slide and JPEG-encoded) and then a second time ("warm": from the tile cache). The tile order is a
seeded shuffle over all levels; the run is bounded by ``max_requests`` and ``max_seconds``.
"""

from __future__ import annotations

import math
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import psutil

from micromets.viewer.app import create_app
from micromets.viewer.server import BackgroundServer


def _tile_urls(app, max_tiles: int, seed: int) -> list[str]:
    tiles = app.state.tiles
    rng = np.random.default_rng(seed)
    urls = []
    for key in app.state.catalog.slides:
        with tiles.generator(key) as gen:
            level_tiles = gen.level_tiles
        for level, (cols, rows) in enumerate(level_tiles):
            n = cols * rows
            pick = rng.choice(n, size=min(n, max_tiles), replace=False)
            urls += [f"/dzi/{key}/slide_files/{level}/{i % cols}_{i // cols}.jpeg" for i in pick]
    order = rng.permutation(len(urls))
    return [urls[i] for i in order[:max_tiles]]


def _run_clients(base_url: str, urls: list[str], n_clients: int, deadline: float) -> tuple[list[float], int]:
    lock = threading.Lock()
    queue = iter(urls)
    latencies_ms: list[float] = []
    errors = [0]

    def client() -> None:
        with httpx.Client(base_url=base_url, timeout=30.0) as http:
            while time.monotonic() < deadline:
                with lock:
                    url = next(queue, None)
                if url is None:
                    return
                t0 = time.perf_counter()
                resp = http.get(url)
                dt_ms = (time.perf_counter() - t0) * 1000
                with lock:
                    if resp.status_code == 200 and resp.content[:2] == b"\xff\xd8":
                        latencies_ms.append(dt_ms)
                    else:
                        errors[0] += 1

    threads = [threading.Thread(target=client) for _ in range(n_clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies_ms, errors[0]


def _summary(latencies_ms: list[float], errors: int, wall_s: float) -> dict:
    a = np.asarray(latencies_ms) if latencies_ms else np.asarray([math.nan])
    return {"n": len(latencies_ms), "errors": errors, "p50_ms": float(np.percentile(a, 50)),
            "p95_ms": float(np.percentile(a, 95)), "max_ms": float(a.max()),
            "tiles_per_s": len(latencies_ms) / wall_s if wall_s > 0 else math.nan}


def tile_latency(results_dir: str | Path, n_clients: int = 8, max_requests: int = 800, max_seconds: float = 60.0,
                 seed: int = 0) -> dict:
    """Tile latency (ms) with ``n_clients`` concurrent clients: ``{"cold": {...}, "warm": {...}, ...}``.

    Each of ``cold`` and ``warm`` holds ``n`` (tiles served), ``errors`` (non-200 or non-JPEG answers),
    ``p50_ms``, ``p95_ms``, ``max_ms`` and ``tiles_per_s``. At most ``max_requests // 2`` distinct tiles are
    requested per pass; each pass stops after ``max_seconds / 2`` s. ``cache_mb`` is the tile cache's size and
    ``process_rss_mb`` the resident memory of this process (server and clients) after the run.
    """
    app = create_app(results_dir)
    urls = _tile_urls(app, max(1, max_requests // 2), seed)
    out = {"n_clients": n_clients, "n_slides": len(app.state.catalog.slides)}
    with BackgroundServer(app) as base_url:
        for name in ("cold", "warm"):
            t0 = time.monotonic()
            lat, err = _run_clients(base_url, urls, n_clients, t0 + max_seconds / 2)
            out[name] = _summary(lat, err, time.monotonic() - t0)
    out["cache_mb"] = app.state.tiles.cache.n_bytes / 2**20
    out["process_rss_mb"] = psutil.Process().memory_info().rss / 2**20
    return out
