"""Metric sources: where analysis gets its numbers (the I/O half; judging is conveyor.core.analysis).

`Sources` is the one `MetricSource` the engine needs: it hands each check to the source for
its metric.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from conveyor.metrics.base import MetricSource, Target
from conveyor.metrics.builtin import BuiltinSource, ProxyWindow
from conveyor.metrics.command import CommandSource
from conveyor.metrics.http import HttpSource
from conveyor.metrics.prometheus import PrometheusSource

if TYPE_CHECKING:
    from conveyor.config.models import AnalysisCheck
    from conveyor.core.analysis import Measurement
    from conveyor.routers.base import Router

__all__ = [
    "BuiltinSource",
    "CommandSource",
    "HttpSource",
    "MetricSource",
    "PrometheusSource",
    "ProxyWindow",
    "Sources",
    "Target",
]


class Sources:
    """Dispatches each check to the source of its metric."""

    def __init__(self, router: Router) -> None:
        self.builtin = BuiltinSource(router)
        self.by_metric: dict[str, MetricSource] = {
            "error_rate": self.builtin,
            "latency_p99_ms": self.builtin,
            "prometheus": PrometheusSource(),
            "http": HttpSource(),
            "command": CommandSource(),
        }

    async def measure(self, check: AnalysisCheck, target: Target, now: float) -> Measurement:
        return await self.by_metric[check.metric].measure(check, target, now)
