"""Run the viewer in a background thread of this process (for benchmarks and browser tests).

``micromets view`` runs uvicorn in the foreground; :class:`BackgroundServer` runs the same application on a
free loopback port in a daemon thread and stops it on exit::

    with BackgroundServer(create_app(results_dir)) as base_url:
        httpx.get(base_url + "/api/catalog")
"""

from __future__ import annotations

import socket
import threading
import time

import uvicorn


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


class BackgroundServer:
    """Context manager: uvicorn serving ``app`` on ``host:port`` (a free port by default); yields the base URL."""

    def __init__(self, app, host: str = "127.0.0.1", port: int | None = None, start_timeout_s: float = 20.0):
        self.host, self.port = host, port or free_port(host)
        self.start_timeout_s = start_timeout_s
        config = uvicorn.Config(app, host=self.host, port=self.port, log_level="warning", lifespan="off")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="micromets-viewer", daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + self.start_timeout_s
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"viewer did not start on {self.base_url}")
            time.sleep(0.05)
        return self.base_url

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
