"""Runs a deployment's analysis checks on their own intervals and reports each measurement."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import replace

from conveyor.aio import cancel_and_wait
from conveyor.config import AnalysisCheck, ResolvedEnvironment
from conveyor.core.analysis import Measurement, Verdict
from conveyor.metrics import Sources, Target
from conveyor.routers.base import Router
from conveyor.secrets.redact import Redactor

log = logging.getLogger("conveyor.analysis")

OnMeasure = Callable[[str, Measurement], None]


class AnalysisRunner:
    def __init__(
        self,
        router: Router,
        now: Callable[[], float],
        on_measure: OnMeasure,
        redactor: Redactor | None = None,
    ) -> None:
        self._now = now
        # A command check's output (in the detail) may quote a secret value.
        self._redactor = redactor or Redactor()
        self._on_measure = on_measure
        # One set of sources for all checks: they share the proxy's stats and sliding windows.
        self._sources = Sources(router)
        self._checks: list[tuple[str, AnalysisCheck, Target]] = []
        self._tasks: list[asyncio.Task[None]] = []

    def add(self, name: str, check: AnalysisCheck, target: Target) -> None:
        self._checks.append((name, check, target))

    def start(self) -> None:
        for name, check, target in self._checks:
            self._tasks.append(asyncio.create_task(self._loop(name, check, target)))

    async def stop(self) -> None:
        await cancel_and_wait(self._tasks)
        self._tasks.clear()

    async def _loop(self, name: str, check: AnalysisCheck, target: Target) -> None:
        # The first measurement is taken at once: for the proxy's counters it is the baseline of
        # the window, so the first real value arrives one interval after the switch, not two.
        first = True
        while True:
            if not first:
                await asyncio.sleep(check.interval)
            first = False
            now = self._now()
            try:
                m = await self._sources.measure(check, target, now)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a broken source is no evidence about the release
                log.exception("measuring %s failed", name)
                m = Measurement(name, Verdict.INCONCLUSIVE, None, f"measurement failed: {exc}", now)
            if self._redactor:
                m = replace(m, detail=self._redactor.text(m.detail))
            self._on_measure(name, m)


def check_name(env: ResolvedEnvironment, service: str, check: AnalysisCheck) -> str:
    """A check's name in measurements and history: prefixed by the service when there are several."""
    webs = [n for n, s in env.services.items() if s.kind == "web"]
    return check.display() if len(webs) == 1 else f"{service}: {check.display()}"


def add_checks(runner: AnalysisRunner, env: ResolvedEnvironment, targets: list[Target]) -> None:
    """Every check of `env`'s rollout, for each target (one per analysed web service)."""
    for target in targets:
        for check in env.rollout.checks():
            runner.add(check_name(env, target.service, check), check, target)
