"""`python -m conveyor.proxy`: the keeper, or with `--worker` one of its workers (process.py).

The compiled hot path, when built for these sources, must be loaded before anything imports its
modules (native.py): hence this file does that and nothing else first.
"""

from __future__ import annotations

from conveyor.proxy.native import activate

activate()

from conveyor.proxy.process import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main())
