"""Environment resolution: one environment's overrides merged into the base configuration."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from conveyor.config.errors import Issue, did_you_mean
from conveyor.config.migrations import merged as merged_migrations
from conveyor.config.models import (
    Config,
    EnvironmentConfig,
    HooksConfig,
    ResolvedEnvironment,
    RolloutConfig,
    ServiceConfig,
)
from conveyor.config.pydantic_errors import issues_from_validation
from conveyor.config.secrets import resolve_secrets
from conveyor.core.gates import check_order

# Hosts that bind every address, so they collide with any other host on the same port.
_WILDCARD_HOSTS = frozenset({"0.0.0.0", "::", ""})


def resolve_environment(
    config: Config, name: str
) -> tuple[ResolvedEnvironment | None, list[Issue]]:
    """Apply environment `name`'s overrides; the resolved environment, or the problems found."""
    if name not in config.environments:
        known = ", ".join(config.environments)
        return None, [Issue(("--env",), f"unknown environment {name!r} (known: {known})")]
    overrides = config.environments[name]
    prefix = ("environments", name)
    issues: list[Issue] = []
    for service in overrides.services:
        if service not in config.services:
            hint = did_you_mean(service, config.services)
            known = f"did you mean {hint!r}?" if hint else "services: " + ", ".join(config.services)
            issues.append(Issue((*prefix, "services", service), f"unknown service ({known})"))

    services: dict[str, ServiceConfig] = {}
    for service, base in config.services.items():
        override = overrides.services.get(service)
        if not override:
            services[service] = base
            continue
        merged = deep_merge(base.model_dump(exclude_unset=True), override)
        try:
            services[service] = ServiceConfig.model_validate(merged)
        except ValidationError as err:
            # The base validated on its own, so the override is what broke it: blame its keys.
            issues.extend(
                issues_from_validation(err, ServiceConfig, (*prefix, "services", service))
            )

    rollout = config.rollout
    if overrides.rollout:
        merged = deep_merge(config.rollout.model_dump(exclude_unset=True), overrides.rollout)
        if "sticky" in overrides.rollout:
            # cookie and header are alternatives: an override naming one replaces the other
            # instead of adding to it (a merge could never take the base's cookie away).
            merged["sticky"] = overrides.rollout["sticky"]
        try:
            rollout = RolloutConfig.model_validate(merged)
        except ValidationError as err:
            issues.extend(issues_from_validation(err, RolloutConfig, (*prefix, "rollout")))

    hooks = config.hooks
    if overrides.hooks:
        merged = deep_merge(config.hooks.model_dump(exclude_unset=True), overrides.hooks)
        try:
            hooks = HooksConfig.model_validate(merged)
        except ValidationError as err:
            issues.extend(issues_from_validation(err, HooksConfig, (*prefix, "hooks")))

    migrations, problems = merged_migrations(
        config.migrations, overrides.migrations, (*prefix, "migrations")
    )
    issues.extend(problems)
    issues.extend(_order_issues(config, name))
    secrets, found = resolve_secrets(
        config.secrets, overrides.secrets, name, config.source.absolute().parent
    )
    issues.extend(found)
    if issues:
        return None, issues
    issues.extend(_listen_conflicts(name, services, overrides))
    if issues:
        return None, issues
    assert secrets is not None  # no issues: resolved
    env = ResolvedEnvironment(
        name=name,
        app=config.app.name,
        services=services,
        rollout=rollout,
        proxy=config.proxy,
        hooks=hooks,
        notifications=config.notifications,
        gates=overrides.gates(config.app.timezone),
        runtime=config.runtime,
        migrations=migrations,
        router=config.router,
        secrets=secrets,
    )
    return env, []


def _order_issues(config: Config, name: str) -> list[Issue]:
    """`after` names another environment, and following `after` never comes back here."""
    after = config.environments[name].after
    if after is None:
        return []
    path = ("environments", name, "after")
    if after == name:
        return [Issue(path, f"environment {name!r} cannot come after itself")]
    if after not in config.environments:
        hint = did_you_mean(after, config.environments)
        known = f"did you mean {hint!r}?" if hint else "known: " + ", ".join(config.environments)
        return [Issue(path, f"unknown environment {after!r} ({known})")]
    chain = [(env, cfg.after) for env, cfg in config.environments.items()]
    if name in check_order(chain):
        return [
            Issue(
                path,
                f"environments come after each other in a loop through {after!r}: no release "
                "could ever be deployed to any of them",
            )
        ]
    return []


def _listen_conflicts(
    env_name: str, services: Mapping[str, ServiceConfig], overrides: EnvironmentConfig
) -> list[Issue]:
    issues: list[Issue] = []
    # (service, key, host, port) of every address the proxy will listen on.
    seen: list[tuple[str, str, str, int]] = []
    for name, svc in services.items():
        if svc.kind != "web" or svc.port is None:
            continue
        for key, number in (("port", svc.port), ("preview_port", svc.preview_port)):
            if number is None:
                continue
            for other, other_key, host, port in seen:
                if port != number or not (
                    host == svc.listen or {host, svc.listen} & _WILDCARD_HOSTS
                ):
                    continue
                override = overrides.services.get(name, {})
                if key in override or "listen" in override:
                    path: tuple[str, ...] = ("environments", env_name, "services", name, key)
                    where = f" in environment {env_name!r}"
                else:
                    path, where = ("services", name, key), ""
                as_preview = " (as its preview_port)" if other_key == "preview_port" else ""
                issues.append(
                    Issue(
                        path,
                        f"{key} {number} on {svc.listen} is already used by service "
                        f"{other!r}{as_preview}{where} (each web service needs its own "
                        "listen address)",
                    )
                )
                break
            seen.append((name, key, svc.listen, number))
    return issues


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """`override` on top of `base`; tables merge key by key, everything else is replaced."""
    merged = dict(base)
    for key, value in override.items():
        current = merged.get(key)
        if isinstance(current, Mapping) and isinstance(value, Mapping):
            merged[key] = deep_merge(current, value)
        else:
            merged[key] = value
    return merged
