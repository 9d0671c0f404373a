"""The conveyor demo worker: prints a heartbeat with its version every 0.5s.

Standard library only. Version from DEMO_VERSION, else demo.json "version", else "dev".
Exits 0 on SIGTERM.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading

HEARTBEAT = 0.5


def version() -> str:
    if "DEMO_VERSION" in os.environ:
        return os.environ["DEMO_VERSION"]
    try:
        with open("demo.json", encoding="utf-8") as f:
            return str(json.load(f).get("version", "dev"))
    except FileNotFoundError:
        return "dev"


def main() -> None:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
    signal.signal(signal.SIGINT, lambda signum, frame: stop.set())
    name = version()
    beat = 0
    while True:
        beat += 1
        print(f"worker {name} heartbeat {beat}", flush=True)
        if stop.wait(HEARTBEAT):
            break
    print(f"worker {name} got SIGTERM, exiting", flush=True)
    sys.exit(0)


if __name__ == "__main__":
    main()
