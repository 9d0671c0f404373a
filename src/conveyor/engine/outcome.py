"""What a deployment, rollback or other engine operation hands back to the agent."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

Emit = Callable[[dict[str, Any]], None]


@dataclass
class Outcome:
    exit_code: int
    deployment_id: int | None
    outcome: str
    reason: str
    data: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "deployment": self.deployment_id,
            "outcome": self.outcome,
            "reason": self.reason,
            **self.data,
        }
