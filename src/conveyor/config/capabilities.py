"""A rollout the configured router cannot carry out is refused when the file is loaded.

A canary needs a router that splits traffic by weight; explicit stickiness needs one that keeps a
user on a color; the built-in error_rate and latency_p99_ms checks need one that counts responses
per color, and latency_p99_ms a latency histogram per color as well; a preview port needs one that
can open a second address. Found at load time with the file, line and key, never half-way through
a deployment.
"""

from __future__ import annotations

from collections.abc import Mapping

from conveyor.config.errors import Issue
from conveyor.config.models import BUILTIN_METRICS, Config, ResolvedEnvironment
from conveyor.routers.kinds import COUNTERS, LATENCY, PREVIEW, STICKY, WEIGHTS


def router_issues(
    config: Config, env: ResolvedEnvironment, features: frozenset[str]
) -> list[Issue]:
    """What `env`'s rollout asks of the router that `features` cannot do."""
    kind = config.router.kind
    overrides = config.environments[env.name]
    issues: list[Issue] = []

    def where(*key: str) -> tuple[str, ...]:
        # Blame the environment's override when it set the key, the base configuration otherwise.
        node: Mapping[str, object] = overrides.rollout
        for part in key:
            value = node.get(part) if isinstance(node, Mapping) else None
            if value is None:
                return ("rollout", *key)
            node = value if isinstance(value, Mapping) else {}
        return ("environments", env.name, "rollout", *key)

    def lacks(feature: str, path: tuple[str, ...], what: str) -> None:
        if feature not in features:
            issues.append(Issue(path, f"{what}, which the {kind!r} router cannot do"))

    rollout = env.rollout
    if rollout.strategy == "canary":
        lacks(WEIGHTS, where("strategy"), "a canary splits traffic by weight")
        if "sticky" in rollout.model_fields_set:
            lacks(STICKY, where("sticky"), "sticky canary traffic keeps a user on one color")
    for i, check in enumerate(rollout.analysis):
        if check.metric in BUILTIN_METRICS:
            lacks(
                COUNTERS,
                (*where("analysis"), str(i), "metric"),
                f"{check.metric} is measured from the router's counters per color",
            )
            if check.metric == "latency_p99_ms" and COUNTERS in features:
                lacks(
                    LATENCY,
                    (*where("analysis"), str(i), "metric"),
                    "latency_p99_ms is measured from the router's latency histogram per color",
                )
    for name, svc in env.services.items():
        if svc.preview_port is not None:
            lacks(
                PREVIEW,
                ("services", name, "preview_port"),
                "a preview port opens a second address to the new color",
            )
    return issues
