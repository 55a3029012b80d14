"""Viewer tile latency under 8 concurrent clients on loopback.

    PYTHONPATH=src .venv/bin/python bench/viewer_latency.py RESULTS_DIR [--clients 8] [--requests 800] [--seconds 60]

Prints one JSON object: cold (first request of each tile) and warm (cached) p50/p95 latency in ms.
The same measurement is `micromets.viewer.latency.tile_latency`, which `micromets bench` can call.
"""

import argparse
import json
import sys

from micromets.errors import MicrometsError
from micromets.viewer.latency import tile_latency

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results_dir")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=800)
    parser.add_argument("--seconds", type=float, default=60.0)
    args = parser.parse_args()
    try:
        print(json.dumps(tile_latency(args.results_dir, args.clients, args.requests, args.seconds), indent=2))
    except MicrometsError as err:
        sys.exit(f"viewer_latency: error: {err}")
