"""Break-glass: an admin reads a secret whose provider is down, from the last cached copy.

Only users in `[access] admins` may; a refusal is audited too. The providers are asked first
(no need to break glass when they answer); otherwise the newest encrypted copy a remote provider
gave (conveyor.secrets.resolve caches them) is opened. Either way the read is an audit entry of
its own, `secret.break_glass`, and every webhook that wants `break_glass` is told who read
which secret and why (never the value).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from conveyor.config.models import NotificationConfig, ResolvedEnvironment
from conveyor.secrets.base import SecretError, SecretValue
from conveyor.secrets.resolve import Resolver
from conveyor.store import audit

EVENT = "break_glass"


@dataclass(frozen=True)
class BreakGlass:
    value: SecretValue
    how: str  # "aws answered", "cached copy from aws, fetched 2026-12-06 01:02 UTC"
    notified: tuple[tuple[str, bool], ...]  # (webhook origin, delivered)


async def read(
    resolver: Resolver, env: ResolvedEnvironment, admins: list[str], name: str, reason: str
) -> BreakGlass:
    """The value of `name`, from its providers or else from the cache; SecretError if neither."""
    entry = {
        "actor": resolver.actor,
        "action": "secret.break_glass",
        "app": resolver.app,
        "environment": env.name,
        "target": name,
    }
    if resolver.actor not in admins:
        listed = ", ".join(admins) if admins else "nobody: [access] admins is empty"
        await asyncio.to_thread(
            audit.record,
            resolver.store,
            at=resolver.clock(),
            outcome="refused",
            detail=f"not an admin: {reason}",
            **entry,
        )
        raise SecretError(
            f"break-glass reads are for [access] admins ({listed}); {resolver.actor} is not one"
        )
    found = await resolver.check(env.name, [name], purpose=f"break-glass: {reason}")
    if name in found:
        value = found[name]
        how = f"{value.provider} answered: the cached copy was not needed"
    else:
        cached = await asyncio.to_thread(resolver.local.cached, env.name, name)
        if cached is None:
            raise SecretError(
                f"{resolver.explain(env.name, [name], found)}; and there is no cached copy of "
                f"{name} (copies are kept of what command, aws and vault gave)"
            )
        rec, text = cached
        value = SecretValue(name, text, rec.version, rec.provider)
        how = f"cached copy from {rec.provider}, fetched {rec.fetched_at:%Y-%m-%d %H:%M:%S} UTC"
    await asyncio.to_thread(
        audit.record,
        resolver.store,
        at=resolver.clock(),
        outcome="ok",
        detail=reason,
        data={"provider": value.provider, "version": value.version, "how": how},
        **entry,
    )
    notified = await notify(resolver, env, f"{resolver.actor} read {name} ({how}): {reason}")
    return BreakGlass(value, how, notified)


async def notify(
    resolver: Resolver, env: ResolvedEnvironment, reason: str
) -> tuple[tuple[str, bool], ...]:
    """Tell every webhook that wants break_glass; (origin, delivered) of each."""
    from conveyor.engine.notify import Notice, deliver, public_origin

    notice = Notice(
        event=EVENT,
        app=env.app,
        environment=env.name,
        version="",
        deployment_id=0,
        reason=reason,
        measurements=[],
        at=resolver.clock(),
    )
    sent = []
    for config in env.notifications:
        if EVENT not in config.events:
            continue
        target = await _with_url(resolver, env, config)
        if target is None:
            sent.append((f"[secret:{config.url_secret}]", False))
            continue
        sent.append((public_origin(target.url), await deliver(target, notice)))
    return tuple(sent)


async def _with_url(
    resolver: Resolver, env: ResolvedEnvironment, config: NotificationConfig
) -> NotificationConfig | None:
    """`config` with its URL, its url_secret resolved (the cache too: the provider may be the
    very thing that is down); None when it cannot be had."""
    if config.url or not config.url_secret:
        return config
    name = config.url_secret
    found = await resolver.check(env.name, [name], purpose="break-glass notification")
    if name in found:
        return config.model_copy(update={"url": found[name].value})
    try:
        cached = await asyncio.to_thread(resolver.local.cached, env.name, name)
    except SecretError:
        return None
    return config.model_copy(update={"url": cached[1]}) if cached else None
