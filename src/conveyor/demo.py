"""`conveyor demo`: conveyor's main job, end to end, on the embedded example app.

In a scratch directory: deploy v1, drive steady traffic through the proxy, deploy v2 blue/green,
try a v3 that never becomes healthy (refused; v2 keeps serving), roll back to v1, then print what
users saw. The demo uses the real CLI, agent, proxy and processes: nothing is simulated.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from conveyor.loadgen import LoadGenerator, percentile
from conveyor.runtimes.local import free_port

CONFIG = """\
[app]
name = "demo"

[services.web]
command = "{python} app.py --port {{port}}"
port = {port}

[services.web.health]
path = "/healthz"
interval = "100ms"
healthy_threshold = 2
start_timeout = "4s"

[services.worker]
kind = "worker"
command = "{python} worker.py"

[services.worker.health]
interval = "100ms"
healthy_threshold = 2

[rollout]
standby = "10m"
drain_timeout = "5s"
bake = "2s"               # after the switch, the proxy's error rate must stay under 1%

[[rollout.analysis]]
metric = "error_rate"
max = 0.01
interval = "500ms"
window = "2s"
min_requests = 20

[environments.dev]
"""


def demo_app_source() -> Path:
    """The example app: packaged inside the wheel, or beside the source tree in a checkout."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "_demoapp", here.parents[1] / "examples" / "demoapp"):
        if (candidate / "app.py").exists():
            return candidate
    raise FileNotFoundError("the demo app is missing from this installation")


class ScratchProject:
    """The demo app in a temp directory, driven through the real `conveyor` CLI."""

    def __init__(self, console: Console, config: str = CONFIG) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="conveyor-demo-", dir="/tmp"))
        self.console = console
        self.env = {**os.environ, "CONVEYOR_PROJECT": str(self.dir)}
        self.env.pop("CONVEYOR_HOME", None)
        self.env.pop("CONVEYOR_DATABASE_URL", None)
        for name in ("app.py", "worker.py"):
            shutil.copy(demo_app_source() / name, self.dir / name)
        self.port = free_port("127.0.0.1")
        (self.dir / "conveyor.toml").write_text(
            config.format(python=sys.executable, port=self.port)
        )

    def close(self, keep: bool = False) -> None:
        subprocess.run(
            [sys.executable, "-m", "conveyor", "agent", "stop", "--yes"],
            env=self.env,
            cwd=self.dir,
            capture_output=True,
            timeout=60,
        )
        if keep:
            self.console.print(f"kept {self.dir}")
        else:
            shutil.rmtree(self.dir, ignore_errors=True)

    def say(self, text: str) -> None:
        self.console.print(text)

    def conveyor(self, *args: str) -> tuple[int, dict[str, Any]]:
        proc = subprocess.run(
            [sys.executable, "-m", "conveyor", *args],
            env=self.env,
            cwd=self.dir,
            capture_output=True,
            text=True,
            timeout=120,
        )
        data: dict[str, Any] = {}
        if "--json" in args and proc.stdout.strip():
            data = json.loads(proc.stdout)
        if proc.returncode not in (0, 1):
            raise RuntimeError(f"conveyor {' '.join(args)} failed:\n{proc.stderr}{proc.stdout}")
        return proc.returncode, data

    def release(self, version: str, **behaviour: Any) -> None:
        (self.dir / "demo.json").write_text(json.dumps({"version": version, **behaviour}))
        self.conveyor("release", "create", "--version", version, "--json")


def run_demo(keep: bool = False) -> int:
    console = Console(highlight=False)
    demo = ScratchProject(console)
    port = demo.port
    load: LoadGenerator | None = None
    switches: list[tuple[str, float]] = []
    ok = False
    try:
        console.rule("conveyor demo")
        demo.say(f"scratch project in {demo.dir}, public port 127.0.0.1:{port}")
        demo.release("v1")
        code, out = demo.conveyor("deploy", "v1", "--env", "dev", "--json")
        if code != 0:
            raise RuntimeError(f"deploying v1 failed: {out.get('error')}")
        demo.say("[green]✓[/] v1 is live (first deploy: nothing to switch from)")

        load = LoadGenerator("127.0.0.1", port, connections=8, max_seconds=120).start()
        demo.say("driving steady traffic through the proxy: 8 keep-alive connections")

        demo.release("v2")
        t0 = time.monotonic()
        code, out = demo.conveyor("deploy", "v2", "--env", "dev", "--json")
        if code != 0:
            raise RuntimeError(f"deploying v2 failed: {out.get('error')}")
        switches.append(("v1 → v2", out["switch_ms"]["web"]))
        demo.say(
            f"[green]✓[/] v2 is live: blue/green in {time.monotonic() - t0:.1f}s, "
            f"traffic switched in {out['switch_ms']['web']:g} ms; v1 waits on standby"
        )
        for m in out.get("measurements", []):
            demo.say(f"  analysis during the 2s bake: {m['check']} {m['detail']} ({m['verdict']})")

        demo.release("v3", healthy=False)
        code, out = demo.conveyor("deploy", "v3", "--env", "dev", "--json")
        if code != 1:
            raise RuntimeError("v3 never becomes healthy, yet its deploy did not fail")
        first = str(out.get("reason", "")).splitlines()[0]
        demo.say(f"[green]✓[/] v3 refused: {first}; v2 kept serving")

        code, out = demo.conveyor("rollback", "--env", "dev", "--json")
        if code != 0:
            raise RuntimeError(f"rollback failed: {out.get('error')}")
        switches.append(("v2 → v1 (rollback)", out["switch_ms"]["web"]))
        demo.say(
            f"[green]✓[/] rolled back to {out['version']} in {out['switch_ms']['web']:g} ms (standby switch)"
        )
        time.sleep(0.5)  # let traffic reach v1 so the summary shows it served
        result = load.stop()
        load = None
        console.rule("summary")
        demo.say(f"requests served   {result.requests}")
        demo.say(
            f"failed requests   {result.failed}  (non-2xx {result.non_2xx}, socket errors {result.errors})"
        )
        demo.say(
            "served by         "
            + ", ".join(f"{v}: {n}" for v, n in sorted(result.versions.items()))
        )
        demo.say(
            f"latency p50/p99   {percentile(result.latencies, 50) * 1000:.1f} / {percentile(result.latencies, 99) * 1000:.1f} ms"
        )
        for label, ms in switches:
            demo.say(f"switch {label:<20} {ms:g} ms")
        for sample in result.error_samples:
            demo.say(f"  [red]{sample}[/]")
        ok = result.failed == 0 and result.requests > 0
        demo.say(
            "[bold green]zero failed requests[/]" if ok else "[bold red]some requests failed[/]"
        )
    except (RuntimeError, subprocess.TimeoutExpired, OSError, KeyError, ValueError) as exc:
        console.print(f"[bold red]demo failed:[/] {exc}")
    finally:
        if load is not None:
            load.stop()
        demo.close(keep)
    return 0 if ok else 1
