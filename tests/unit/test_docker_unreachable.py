"""A Docker engine that does not answer (a socket nobody listens on): nothing is taken for a crash,
nothing raises into the engine, and a start fails with a clear message."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from conveyor.runtimes.base import Handle, RuntimeStartError, Workload
from conveyor.runtimes.docker import DockerRuntime
from conveyor.runtimes.swarm import SwarmRuntime


@pytest.mark.parametrize("kind", [DockerRuntime, SwarmRuntime])
def test_no_engine(
    kind: type[DockerRuntime], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/nobody.sock")
    runtime = kind(tmp_path)
    h = Handle(runtime.name, {"id": "c1", "project": "p", "instance": "i"}, (), 0.0)
    st = asyncio.run(runtime.state(h))
    assert st.alive and st.detail.startswith("unknown (the Docker engine does not answer")
    assert asyncio.run(runtime.adopt(h)) is None
    asyncio.run(runtime.stop(h, 0))  # logged, not raised
    w = Workload(
        "shop", "dev", "web", "blue", "v1", "/r", None, 0, {}, {"image": "x", "build": "."}
    )
    with pytest.raises(RuntimeStartError, match="cannot reach the Docker engine"):
        asyncio.run(runtime.start(w))
