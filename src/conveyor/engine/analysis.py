"""Runs a deployment's analysis checks on their own intervals and reports each measurement."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from conveyor.config import AnalysisCheck
from conveyor.core.analysis import Measurement, Verdict
from conveyor.metrics.base import MetricSource, Target
from conveyor.metrics.builtin import BuiltinSource
from conveyor.metrics.command import CommandSource
from conveyor.metrics.http import HttpSource
from conveyor.metrics.prometheus import PrometheusSource
from conveyor.routers.builtin import ProxyClient

log = logging.getLogger("conveyor.analysis")

OnMeasure = Callable[[str, Measurement], None]


class AnalysisRunner:
    def __init__(
        self, router: ProxyClient, now: Callable[[], float], on_measure: OnMeasure
    ) -> None:
        self._now = now
        self._on_measure = on_measure
        # One builtin source for all checks: they share the proxy's stats and its sliding windows.
        self._sources: dict[str, MetricSource] = {
            "error_rate": (builtin := BuiltinSource(router)),
            "latency_p99_ms": builtin,
            "prometheus": PrometheusSource(),
            "http": HttpSource(),
            "command": CommandSource(),
        }
        self._checks: list[tuple[str, AnalysisCheck, Target]] = []
        self._tasks: list[asyncio.Task[None]] = []

    def add(self, name: str, check: AnalysisCheck, target: Target) -> None:
        self._checks.append((name, check, target))

    def start(self) -> None:
        for name, check, target in self._checks:
            self._tasks.append(asyncio.create_task(self._loop(name, check, target)))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()

    async def _loop(self, name: str, check: AnalysisCheck, target: Target) -> None:
        source = self._sources[check.metric]
        while True:
            await asyncio.sleep(check.interval)
            now = self._now()
            try:
                m = await source.measure(check, target, now)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a broken source is no evidence about the release
                log.exception("measuring %s failed", name)
                m = Measurement(name, Verdict.INCONCLUSIVE, None, f"measurement failed: {exc}", now)
            self._on_measure(name, m)
