"""The models of conveyor.toml.

Everything is strict and closed: TOML is typed, so a string where a number belongs is a mistake
rather than something to coerce, and an unknown key is almost always a typo.

Located errors live in conveyor.config.errors, environment resolution in
conveyor.config.environments, and the translation of pydantic's errors in
conveyor.config.pydantic_errors.
"""

from __future__ import annotations

import ipaddress
import os
import re
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from conveyor.config.errors import (
    ConfigError,
    LocatedValueError,
    did_you_mean,
    dotted_key,
    toml_type,
)
from conveyor.config.migrations import MigrationsConfig
from conveyor.config.secrets import SecretName, SecretNames, SecretsConfig, SecretsSettings
from conveyor.core.durations import parse_duration
from conveyor.core.gates import parse_freeze

NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9_-]*")
IMPLICIT_ENVIRONMENT = "dev"


# --- field types -------------------------------------------------------------------------------


def _check_name(kind: str) -> Any:
    def check(value: str) -> str:
        if not NAME_PATTERN.fullmatch(value):
            raise ValueError(
                f"invalid {kind} name {value!r}: use lowercase letters, digits, '-' and '_', "
                "starting with a letter or digit"
            )
        return value

    return check


def _positive(value: float) -> float:
    if value <= 0:
        raise ValueError("must be greater than 0")
    return value


def _at_least_one(value: int) -> int:
    if value < 1:
        raise ValueError(f"must be at least 1 (got {value})")
    return value


def _non_negative(value: int) -> int:
    if value < 0:
        raise ValueError(f"must be 0 or more (got {value})")
    return value


def _duration(value: object) -> float:
    # A duration is a string or a number of seconds; for anything else, say so in TOML's words
    # (parse_duration's repr of the value would say "True", which nobody wrote).
    if not isinstance(value, str | int | float) or isinstance(value, bool):
        raise ValueError(
            f'expected a duration such as "60s", got {toml_type(value) or "a date or time"}'
        )
    return parse_duration(value)


# In the JSON Schema (`conveyor schema config`): what is written in the file, not the seconds.
_DURATION_SCHEMA = WithJsonSchema(
    {
        "anyOf": [
            {"type": "string", "pattern": r"^\s*(\d+(\.\d+)?|\.\d+)(h|m|s|ms)"},
            {"type": "number", "minimum": 0},
        ],
        "description": 'A duration: "500ms", "2s", "5m", "1h", "1m30s", or seconds.',
    }
)
Duration = Annotated[float, BeforeValidator(_duration), _DURATION_SCHEMA]
PositiveDuration = Annotated[
    float, BeforeValidator(_duration), AfterValidator(_positive), _DURATION_SCHEMA
]
AtLeastOne = Annotated[int, AfterValidator(_at_least_one)]
ServiceName = Annotated[str, AfterValidator(_check_name("service"))]
EnvironmentName = Annotated[str, AfterValidator(_check_name("environment"))]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


# --- conveyor.toml -----------------------------------------------------------------------------


def _check_timezone(value: str) -> str:
    # zoneinfo reads the system's time zone database: imported only when a zone is named.
    if value == "UTC":
        return value
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"unknown time zone {value!r} (use an IANA name such as 'UTC' or 'Europe/Paris')"
        ) from None
    return value


TimeZone = Annotated[str, AfterValidator(_check_timezone)]


class AppConfig(_Model):
    name: Annotated[str, AfterValidator(_check_name("app"))]
    # Where freeze windows are read (an environment may set its own).
    timezone: TimeZone = "UTC"


class HealthConfig(_Model):
    path: str = "/healthz"
    interval: PositiveDuration = 1.0
    timeout: PositiveDuration = 2.0
    healthy_threshold: AtLeastOne = 2
    unhealthy_threshold: AtLeastOne = 3
    start_timeout: PositiveDuration = 60.0

    @field_validator("path")
    @classmethod
    def _path_is_absolute(cls, value: str) -> str:
        if not value.startswith("/") or any(c.isspace() for c in value):
            raise ValueError(
                f"health path must start with '/' and contain no spaces (got {value!r})"
            )
        return value


class ServiceConfig(_Model):
    # `kind` comes first: pydantic validates fields in declaration order, and the checks on
    # command, port and env depend on it.
    kind: Literal["web", "worker"] = "web"
    # A container image instead of a command (runtimes docker, swarm, kubernetes): an existing
    # reference, or, with `build`, the name the release's image is tagged with. Declared before
    # `command`, which may then be left out (the image's own CMD runs).
    image: str | None = None
    build: str | None = None
    command: str | None = Field(default=None, validate_default=True)
    port: int | None = Field(default=None, validate_default=True)
    # Where the new color can be tried before it takes traffic (auto_promote = false).
    preview_port: int | None = None
    listen: str = "127.0.0.1"
    env: dict[str, str] = Field(default_factory=dict)
    # Secrets given to the service when it starts (docs/secrets.md): as environment variables,
    # or with as_file = true as 0600 files whose paths are in the environment.
    secrets: SecretNames = Field(default_factory=list)
    as_file: bool = False
    health: HealthConfig = Field(default_factory=HealthConfig)
    stop_timeout: Duration = 10.0
    workdir: str = "."
    # Containers: where the app listens inside the container (bridge networking; the runtime
    # publishes it on a loopback port it picks), or host networking (the app listens on the port
    # conveyor gives it, as a local process does).
    container_port: int | None = None
    network: Literal["bridge", "host"] = "bridge"
    # Cluster runtimes (swarm, kubernetes): copies of each color, and what each may use
    # (Kubernetes quantities: cpu = "250m", memory = "256Mi").
    replicas: AtLeastOne = 1
    resources: dict[Literal["cpu", "memory"], str] = Field(default_factory=dict)
    # The signal that asks the app to stop (containers: the image's STOPSIGNAL when unset).
    stop_signal: str | None = None

    @field_validator("build")
    @classmethod
    def _build_needs_image(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return value
        parts = PurePosixPath(value).parts
        if not value or value.startswith("/") or ".." in parts:
            raise ValueError(
                f"build must be a directory inside the release, relative to its root (got {value!r})"
            )
        if info.data.get("image") is None:
            raise ValueError("build needs image: the name the built image is tagged with")
        return value

    @field_validator("command")
    @classmethod
    def _command_placeholders(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            if info.data.get("image") is None:
                # Reported as a missing key (a misspelt `comand` then gets only its hint).
                raise PydanticCustomError("missing", "Field required")
            return value
        if not value.strip():
            raise ValueError("command must not be empty")
        for name in re.findall(r"\{([^{}]*)\}", value):
            if name != "port":
                raise ValueError(
                    f"unknown placeholder {{{name}}} in command (only {{port}} is substituted)"
                )
        if "{" in value.replace("{port}", "") or "}" in value.replace("{port}", ""):
            raise ValueError(
                "stray '{' or '}' in command (braces are only allowed in the {port} placeholder)"
            )
        if "{port}" in value and info.data.get("kind") == "worker":
            raise ValueError("workers have no port: remove {port} from the command")
        return value

    @field_validator("port")
    @classmethod
    def _port_matches_kind(cls, value: int | None, info: ValidationInfo) -> int | None:
        kind = info.data.get("kind")
        if kind == "web" and value is None:
            raise ValueError("web services need a port (the public port the proxy listens on)")
        if kind == "worker" and value is not None:
            raise ValueError('workers have no port: remove it (or use kind = "web")')
        if value is not None and not 1 <= value <= 65535:
            raise ValueError(f"port must be between 1 and 65535 (got {value})")
        return value

    @field_validator("preview_port")
    @classmethod
    def _preview_port(cls, value: int | None, info: ValidationInfo) -> int | None:
        if value is None:
            return value
        if info.data.get("kind") == "worker":
            raise ValueError("workers have no port: remove preview_port")
        if not 1 <= value <= 65535:
            raise ValueError(f"preview_port must be between 1 and 65535 (got {value})")
        if value == info.data.get("port"):
            raise ValueError(
                f"preview_port must differ from port ({value}): the public port keeps serving "
                "the current version while the new one is previewed"
            )
        return value

    @field_validator("listen")
    @classmethod
    def _listen_is_a_host(cls, value: str) -> str:
        if not value or any(c.isspace() for c in value):
            raise ValueError(f"listen must be a host address like 127.0.0.1 (got {value!r})")
        return value

    @field_validator("env")
    @classmethod
    def _env_names(cls, value: dict[str, str], info: ValidationInfo) -> dict[str, str]:
        for name in value:
            if not name or "=" in name or "\0" in name:
                raise ValueError(f"invalid environment variable name {name!r}")
            if name == "PORT" and info.data.get("kind") == "web":
                raise ValueError("PORT is set by conveyor to each color's own port: remove it")
        return value

    @field_validator("secrets")
    @classmethod
    def _secrets_not_in_env(cls, value: list[str], info: ValidationInfo) -> list[str]:
        env = info.data.get("env") or {}
        for index, name in enumerate(value):
            if name in env:
                raise LocatedValueError(
                    f"{name} is both a secret and a plain env value: remove it from env "
                    f"(`conveyor secrets set {name}` keeps its value)",
                    str(index),
                )
        return value

    @field_validator("workdir")
    @classmethod
    def _workdir_inside_release(cls, value: str) -> str:
        parts = PurePosixPath(value).parts
        if not value or value.startswith("/") or ".." in parts:
            raise ValueError(
                f"workdir must be a path inside the release, relative to its root (got {value!r})"
            )
        return value

    def command_for(self, port: int | None) -> str | None:
        """The command with {port} substituted (the only placeholder validation allows)."""
        if port is None or self.command is None:
            return self.command
        return self.command.replace("{port}", str(port))

    def runtime_options(self) -> dict[str, Any]:
        """What a runtime reads of this service besides its command (Workload.options)."""
        return {
            "workdir": self.workdir,
            "image": self.image,
            "build": self.build,
            "container_port": self.container_port,
            "network": self.network,
            "replicas": self.replicas,
            "resources": dict(self.resources),
            "stop_signal": self.stop_signal,
            "stop_timeout": self.stop_timeout,
            "health": self.health.model_dump(),
            "listen": self.listen,
        }


# --- rollout: strategy, canary steps, analysis -------------------------------------------------

Metric = Literal["error_rate", "latency_p99_ms", "prometheus", "http", "command"]
METRICS: tuple[Metric, ...] = get_args(Metric)
# Measured by conveyor's own proxy over a sliding window of its counters.
BUILTIN_METRICS = frozenset({"error_rate", "latency_p99_ms"})
DEFAULT_PROMETHEUS_URL = "http://127.0.0.1:9090"
# What an http check's url may contain; the engine substitutes them per deployment.
URL_PLACEHOLDERS = ("version", "color", "environment", "service", "app", "port")
# A cookie name or an HTTP header name: an RFC 7230 token (RFC 6265 cookie names are tokens too).
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_PLACEHOLDER = re.compile(r"\{([A-Za-z0-9_]*)\}")


def _check_metric(value: object) -> object:
    # Before the Literal check, to offer a "did you mean" instead of the list of literals.
    if isinstance(value, str) and value not in METRICS:
        hint = did_you_mean(value, METRICS)
        known = f"did you mean {hint!r}?" if hint else "metrics: " + ", ".join(METRICS)
        raise ValueError(f"unknown metric {value!r} ({known})")
    return value


def _check_http_url(value: str) -> str:
    if not re.match(r"https?://[^/\s]", value) or any(c.isspace() for c in value):
        raise ValueError(f"url must be an http:// or https:// URL (got {value!r})")
    return value


class AnalysisCheck(_Model):
    """One measurement taken repeatedly while the new version bakes or a canary step runs."""

    # `metric` comes first: the checks on url depend on it.
    metric: Annotated[Metric, BeforeValidator(_check_metric)]
    name: str | None = None
    max: float | None = None
    min: float | None = None
    interval: PositiveDuration = 1.0
    window: PositiveDuration = 10.0
    min_requests: Annotated[int, AfterValidator(_non_negative)] = 50
    failure_limit: AtLeastOne = 2
    timeout: PositiveDuration = 5.0
    query: str | None = None
    url: str | None = Field(default=None, validate_default=True)
    command: str | None = None
    field: str | None = None

    @field_validator("name")
    @classmethod
    def _name_not_blank(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("name must not be empty")
        return value

    @field_validator("url")
    @classmethod
    def _url(cls, value: str | None, info: ValidationInfo) -> str | None:
        metric = info.data.get("metric")
        if value is None:
            # Filled in here so that every prometheus check carries the URL it queries.
            return DEFAULT_PROMETHEUS_URL if metric == "prometheus" else None
        _check_http_url(value)
        if metric == "http":
            for name in _PLACEHOLDER.findall(value):
                if name not in URL_PLACEHOLDERS:
                    hint = did_you_mean(name, URL_PLACEHOLDERS)
                    known = (
                        f"did you mean {{{hint}}}?"
                        if hint
                        else "known: " + " ".join(f"{{{p}}}" for p in URL_PLACEHOLDERS)
                    )
                    raise ValueError(f"unknown placeholder {{{name}}} in url ({known})")
        return value

    @field_validator("field")
    @classmethod
    def _field_path(cls, value: str | None) -> str | None:
        if value is not None and (not value or any(not part for part in value.split("."))):
            raise ValueError(f"field must be a dotted path like 'checks.errors' (got {value!r})")
        return value

    @model_validator(mode="after")
    def _keys_fit_the_metric(self) -> AnalysisCheck:
        metric = self.metric
        needs = {"prometheus": "query", "http": "url", "command": "command"}
        # Keys that belong to another kind of check are mistakes, not options to ignore.
        owners = {"query": ("prometheus",), "url": ("prometheus", "http"), "command": ("command",)}
        for key, metrics in owners.items():
            if getattr(self, key) is not None and metric not in metrics:
                raise LocatedValueError(f"{key} is not used by metric {metric!r}", key)
        required = needs.get(metric)
        if required is not None:
            current = getattr(self, required)
            if current is None or not current.strip():
                example = {
                    "query": 'query = "sum(rate(http_requests_total[1m]))"',
                    "url": 'url = "http://127.0.0.1:{port}/internal/check"',
                    "command": 'command = "python3 check.py"',
                }[required]
                raise LocatedValueError(
                    f"metric {metric!r} needs a non-empty {required} (e.g. {example})", required
                )
        if self.field is not None and metric not in ("http", "command"):
            raise LocatedValueError(
                f"field is only for metric 'http' or 'command' ({metric!r} measures a number "
                "itself)",
                "field",
            )
        # A number is measured, so there must be something to compare it with. (Without
        # `field`, http/command checks pass or fail on the status alone.)
        measures_a_number = metric not in ("http", "command") or self.field is not None
        if measures_a_number and self.max is None and self.min is None:
            raise LocatedValueError(
                f"metric {metric!r} needs a threshold: max (fail above) or min (fail below)",
                "max",
            )
        if self.max is not None and self.min is not None and self.min > self.max:
            raise LocatedValueError(
                f"min ({self.min}) is greater than max ({self.max}): every measurement would fail",
                "min",
            )
        return self

    def display(self) -> str:
        """The check's name in logs, measurements and notifications."""
        if self.name is not None:
            return self.name
        if self.metric == "http":
            return f"http {self.url}"
        return self.metric


DEFAULT_ANALYSIS: tuple[AnalysisCheck, ...] = (
    AnalysisCheck(
        metric="error_rate",
        max=0.01,
        min_requests=50,
        interval=1.0,
        window=10.0,
        failure_limit=2,
    ),
)


def _parse_pause(value: object) -> object:
    if value == "manual":
        return value
    try:
        return parse_duration(value)
    except ValueError:
        raise ValueError(
            f'pause must be a duration like "30s" or "manual" (got {value!r})'
        ) from None


class CanaryStep(_Model):
    weight: int
    # None: move on once the step's analysis has passed a round; "manual": wait for
    # `conveyor promote`.
    pause: (
        Annotated[
            float | Literal["manual"],
            BeforeValidator(_parse_pause),
            WithJsonSchema({"anyOf": [{"type": "string"}, {"type": "number", "minimum": 0}]}),
        ]
        | None
    ) = None

    @field_validator("weight")
    @classmethod
    def _weight_range(cls, value: int) -> int:
        if not 1 <= value <= 100:
            raise ValueError(f"weight must be between 1 and 100 (got {value})")
        return value


class StickyConfig(_Model):
    """How a client keeps seeing the same color during a canary."""

    cookie: str | None = "conveyor_canary"
    header: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _header_replaces_cookie(cls, data: Any) -> Any:
        # The two are alternatives: writing `header` alone means "no cookie", not "the default
        # cookie as well".
        if isinstance(data, dict) and data.get("header") is not None:
            if data.get("cookie") is not None:
                raise ValueError("set either cookie or header, not both")
            data = {**data, "cookie": None}
        return data

    @field_validator("cookie", "header")
    @classmethod
    def _token(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None and not _TOKEN.fullmatch(value):
            what = "cookie" if info.field_name == "cookie" else "header"
            raise ValueError(
                f"invalid {what} name {value!r}: use letters, digits and !#$%&'*+-.^_`|~ "
                "(no spaces, '=' or ';')"
            )
        return value

    @model_validator(mode="after")
    def _one_of_them(self) -> StickyConfig:
        if self.cookie is None and self.header is None:
            raise ValueError("set a cookie or a header to keep clients on one color")
        return self


class RolloutConfig(_Model):
    standby: Duration = 600.0
    drain_timeout: Duration = 30.0
    # `strategy` comes before the keys whose checks depend on it.
    strategy: Literal["bluegreen", "canary"] = "bluegreen"
    bake: Duration = 60.0
    auto_promote: bool = True
    # Unset: "pass" for bluegreen (waiting protects nobody once all traffic moved: the deploy
    # ends "live, unverified"), "wait" for canary (waiting keeps most users on the old version).
    on_inconclusive: Literal["pass", "fail", "wait"] | None = None
    # How long any wait (for data, a manual gate or step) may last; then on_deadline decides.
    progress_deadline: PositiveDuration = 600.0
    on_deadline: Literal["abort", "promote"] = "abort"
    steps: list[CanaryStep] = Field(default_factory=list, validate_default=True)
    sticky: StickyConfig = Field(default_factory=StickyConfig)
    analysis: list[AnalysisCheck] = Field(default_factory=list)

    def inconclusive_policy(self) -> Literal["pass", "fail", "wait"]:
        """on_inconclusive as set, or the strategy's default."""
        if self.on_inconclusive is not None:
            return self.on_inconclusive
        return "pass" if self.strategy == "bluegreen" else "wait"

    @field_validator("auto_promote")
    @classmethod
    def _bluegreen_only(cls, value: bool, info: ValidationInfo) -> bool:
        if not value and info.data.get("strategy") == "canary":
            raise ValueError(
                'auto_promote is for strategy = "bluegreen"; a canary waits for '
                '`conveyor promote` at steps with pause = "manual"'
            )
        return value

    @field_validator("steps")
    @classmethod
    def _steps_fit_the_strategy(
        cls, value: list[CanaryStep], info: ValidationInfo
    ) -> list[CanaryStep]:
        strategy = info.data.get("strategy")
        if strategy == "bluegreen" and value:
            raise ValueError(
                'steps are only for strategy = "canary" (bluegreen moves all traffic at once)'
            )
        if strategy != "canary":
            return value
        if not value:
            raise ValueError(
                'strategy = "canary" needs steps, e.g. steps = [{ weight = 10, pause = "1m" }, '
                "{ weight = 100 }]"
            )
        for index in range(1, len(value)):
            if value[index].weight <= value[index - 1].weight:
                raise LocatedValueError(
                    f"step weights must increase: {value[index].weight} after "
                    f"{value[index - 1].weight}",
                    str(index),
                    "weight",
                )
        if value[-1].weight != 100:
            raise LocatedValueError(
                f"the last step must send all traffic to the new version: weight = 100 "
                f"(got {value[-1].weight})",
                str(len(value) - 1),
                "weight",
            )
        return value

    @field_validator("analysis")
    @classmethod
    def _distinct_names(cls, value: list[AnalysisCheck]) -> list[AnalysisCheck]:
        # Measurements are recorded and reported by name, so two checks may not share one.
        seen: set[str] = set()
        for index, check in enumerate(value):
            if check.display() in seen:
                raise LocatedValueError(
                    f"two checks are named {check.display()!r}: give this one a distinct name",
                    str(index),
                    "name",
                )
            seen.add(check.display())
        return value

    def checks(self) -> list[AnalysisCheck]:
        """The analysis to run: the configured checks, or the default error-rate check."""
        return list(self.analysis) if self.analysis else list(DEFAULT_ANALYSIS)


# --- hooks and notifications -------------------------------------------------------------------


class HookConfig(_Model):
    """A shell command run at one point of a deployment (see HooksConfig)."""

    command: str
    timeout: PositiveDuration = 60.0

    @model_validator(mode="before")
    @classmethod
    def _string_is_the_command(cls, data: Any) -> Any:
        # `smoke = "python3 smoke.py"` is shorthand for `smoke = { command = "python3 smoke.py" }`.
        if isinstance(data, str):
            if not data.strip():
                raise ValueError("hook command must not be empty")
            return {"command": data}
        return data

    @field_validator("command")
    @classmethod
    def _not_empty(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("hook command must not be empty")
        return value


class HooksConfig(_Model):
    pre_deploy: HookConfig | None = None
    smoke: HookConfig | None = None
    post_switch: HookConfig | None = None
    post_deploy: HookConfig | None = None
    on_rollback: HookConfig | None = None


Event = Literal[
    "started",
    "switched",
    "step",
    "succeeded",
    "failed",
    "rolled_back",
    "aborted",
    "crash_loop",
    "break_glass",
]
EVENTS: tuple[Event, ...] = get_args(Event)


def _check_event(value: object) -> object:
    if isinstance(value, str) and value not in EVENTS:
        hint = did_you_mean(value, EVENTS)
        known = f"did you mean {hint!r}?" if hint else "events: " + ", ".join(EVENTS)
        raise ValueError(f"unknown event {value!r} ({known})")
    return value


def _check_webhook_url(value: str) -> str:
    return _check_http_url(value) if value else value


class NotificationConfig(_Model):
    # The webhook's URL, or the name of the secret that holds it (a Slack webhook URL is a
    # credential: it has no place in a committed conveyor.toml). The engine resolves url_secret
    # into url before it sends anything.
    url: Annotated[str, AfterValidator(_check_webhook_url)] = ""
    url_secret: SecretName | None = None
    events: list[Annotated[Event, BeforeValidator(_check_event)]] = Field(
        default_factory=lambda: list(EVENTS)
    )
    format: Literal["json", "slack", "auto"] = "auto"
    timeout: PositiveDuration = 5.0
    retries: Annotated[int, AfterValidator(_non_negative)] = 3

    @field_validator("events")
    @classmethod
    def _some_events(cls, value: list[Event]) -> list[Event]:
        if not value:
            raise ValueError("events must not be empty (leave it out to get every event)")
        return value

    @model_validator(mode="after")
    def _url_or_secret(self) -> NotificationConfig:
        if self.url and self.url_secret:
            raise LocatedValueError(
                "url and url_secret are alternatives: keep one (url_secret keeps the URL out "
                "of conveyor.toml)",
                "url_secret",
            )
        if not self.url and not self.url_secret:
            raise ValueError(
                "set url, or url_secret (the name of a secret holding the URL: "
                "`conveyor secrets set SLACK_WEBHOOK_URL --env ...`)"
            )
        return self


# `[proxy] workers`: processes accepting on the proxy's listening sockets (docs/proxy.md, Workers).
MAX_WORKERS = 64
AUTO_WORKERS_CAP = 8


def _workers(value: object) -> object:
    if value == "auto":
        return value
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f'workers must be "auto" or a number of processes, got {value!r}')
    if not 1 <= value <= MAX_WORKERS:
        raise ValueError(f"workers must be between 1 and {MAX_WORKERS} (got {value})")
    return value


def resolve_workers(value: int | str) -> int:
    """`"auto"`: the cores this process may run on, at most AUTO_WORKERS_CAP; else the number."""
    if value == "auto":
        return max(1, min(AUTO_WORKERS_CAP, len(os.sched_getaffinity(0))))
    return int(value)


class ProxyConfig(_Model):
    # One setting of the proxy process (not of a route): read when the agent starts the proxy and
    # by `conveyor proxy reload`. Everything below travels with each route as its limits.
    workers: Annotated[int | Literal["auto"], BeforeValidator(_workers)] = "auto"
    max_request_line: AtLeastOne = 8192
    max_header_size: AtLeastOne = 65536
    max_headers: AtLeastOne = 100
    connect_timeout: PositiveDuration = 5.0
    upstream_timeout: PositiveDuration = 60.0
    retries: Annotated[int, AfterValidator(_non_negative)] = 3
    keepalive_timeout: PositiveDuration = 75.0
    header_timeout: PositiveDuration = 10.0


class HaproxyConfig(_Model):
    # [router.haproxy]: used when kind = "haproxy" (docs/haproxy.md). A change takes effect at the
    # route's next apply (its HAProxy is replaced seamlessly); `binary` when one next starts.
    binary: str = "/usr/sbin/haproxy"
    maxconn: AtLeastOne = 4096  # per route (each route has its own HAProxy)
    threads: AtLeastOne = 1  # per route's HAProxy (one thread carries ~100k req/s, docs/proxy.md)
    connect_timeout: PositiveDuration = 5.0
    server_timeout: PositiveDuration = 60.0  # request sent -> response (HAProxy answers 504)
    client_timeout: PositiveDuration = 75.0  # idle client, and keep-alive between requests
    request_timeout: PositiveDuration = 10.0  # a request head, once begun (408)


class RouterConfig(_Model):
    # Which router moves traffic between colors (routers/registry.py makes it; what each can do
    # is in routers/kinds.py).
    kind: Literal["builtin", "haproxy", "kubernetes", "gateway-api"] = "builtin"
    haproxy: HaproxyConfig = Field(default_factory=HaproxyConfig)


class RuntimeConfig(_Model):
    # What starts the colors (runtimes/registry.py makes it): local processes by default.
    # Changing it takes effect when the agent (re)starts.
    kind: Literal["local", "docker", "swarm", "kubernetes"] = "local"
    # docker: images of older releases kept for rollback (older ones are pruned).
    keep_images: AtLeastOne = 3
    # kubernetes: where the colors run (the kubeconfig's current context unless named).
    namespace: str = "default"
    context: str | None = None
    # kubernetes with [router] kind = "gateway-api": the Gateway its HTTPRoutes attach to
    # ("name", or "namespace/name" for a Gateway in another namespace).
    gateway: str | None = None


class StateConfig(_Model):
    # Where the state lives: unset, the SQLite file .conveyor/state.db. A PostgreSQL database
    # shared by several hosts makes their locks and audit log one. CONVEYOR_DATABASE_URL wins.
    # (conveyor.store.db reads this key itself, without pydantic: see configured_url.)
    url: str | None = None

    @field_validator("url")
    @classmethod
    def _scheme(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(
            ("postgresql://", "postgres://", "postgresql+psycopg://", "sqlite:///")
        ):
            raise ValueError(
                "url must be postgresql://user@host/database or sqlite:///path (keep a password "
                "out of conveyor.toml: use CONVEYOR_DATABASE_URL or ~/.pgpass)"
            )
        return value


class AgentConfig(_Model):
    # admin_token_file comes first: the admin_host check below needs to see it.
    admin_token_file: str | None = None
    admin_host: str = Field(default="127.0.0.1", validate_default=True)
    admin_port: int = 0
    # The agent's own copies of the state database (`.conveyor/backups/daily-*`): every
    # backup_every (0: never), the newest backup_keep kept.
    backup_every: Duration = 86400.0
    backup_keep: int = Field(default=7, ge=1)

    @field_validator("admin_port")
    @classmethod
    def _port_range(cls, value: int) -> int:
        if not 0 <= value <= 65535:
            raise ValueError(f"admin_port must be between 0 and 65535 (got {value})")
        return value

    @field_validator("admin_host")
    @classmethod
    def _token_beyond_loopback(cls, value: str, info: ValidationInfo) -> str:
        # The admin endpoint is read-only, but anything reachable from other machines needs a
        # credential: a scrape from the network must present the token.
        if not _is_loopback(value) and not info.data.get("admin_token_file"):
            raise ValueError(
                f"admin_host {value!r} is reachable from other machines: set admin_token_file "
                "(a file holding a bearer token) or listen on 127.0.0.1"
            )
        return value


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# --- promotion: gates, checks, access ----------------------------------------------------------


def _freeze_window(value: object) -> object:
    parse_freeze(value)  # ValueError saying what is accepted
    return value


def _user_names(kind: str) -> Any:
    def check(value: list[str]) -> list[str]:
        seen: set[str] = set()
        for index, name in enumerate(value):
            if not name.strip() or name != name.strip():
                raise LocatedValueError(
                    f"invalid user name {name!r} in {kind} (no blanks around it)", str(index)
                )
            if name in seen:
                raise LocatedValueError(f"{name!r} is listed twice in {kind}", str(index))
            seen.add(name)
        return value

    return check


FreezeText = Annotated[str, BeforeValidator(_freeze_window)]
CheckName = Annotated[str, AfterValidator(_check_name("check"))]


class CheckConfig(_Model):
    """[checks.NAME]: how `conveyor check run NAME` runs the check (in the release's files)."""

    command: str | None = None
    timeout: PositiveDuration = 1800.0

    @field_validator("command")
    @classmethod
    def _not_blank(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("command must not be empty (leave it out for checks CI records)")
        return value


def _group_binding(value: str) -> str:
    """`[access.oidc] groups` values: "ROLE" (every environment) or "ROLE:ENVIRONMENT"."""
    from conveyor.core.access import Role

    role, _, env = value.partition(":")
    if role not in {r.value for r in Role}:
        raise ValueError(
            f"invalid binding {value!r}: write ROLE or ROLE:ENVIRONMENT, ROLE one of "
            f'{", ".join(r.value for r in Role)} (e.g. "deployer:staging")'
        )
    if ":" in value:
        _check_name("environment")(env)
    return value


class OidcConfig(_Model):
    """[access.oidc]: browser login through an OpenID Connect provider (docs/access.md)."""

    issuer: str
    client_id: str
    # The name of a secret (conveyor's secret store) holding the client secret; none: a public
    # client (PKCE alone).
    client_secret_secret: SecretName | None = None
    # The environment whose secret providers hold it ([environments.NAME.secrets]).
    secret_environment: EnvironmentName | None = None
    # A group in the ID token's groups claim -> the binding its members get while logged in.
    groups: dict[str, Annotated[str, AfterValidator(_group_binding)]] = Field(default_factory=dict)
    groups_claim: str = "groups"
    username_claim: str = "preferred_username"
    scopes: list[str] = Field(default_factory=lambda: ["openid", "profile", "email"])

    @field_validator("issuer")
    @classmethod
    def _https_issuer(cls, value: str) -> str:
        from urllib.parse import urlsplit

        parts = urlsplit(value)
        loopback = parts.hostname in ("127.0.0.1", "localhost", "::1")
        if parts.scheme != "https" and not (parts.scheme == "http" and loopback):
            raise ValueError(
                f"issuer {value!r} must be an https:// URL (http:// only on 127.0.0.1)"
            )
        return value.rstrip("/")

    @model_validator(mode="after")
    def _secret_has_environment(self) -> OidcConfig:
        if self.client_secret_secret and not self.secret_environment:
            raise LocatedValueError(
                "client_secret_secret needs secret_environment: the environment whose secret "
                'providers hold it (e.g. secret_environment = "production")',
                "secret_environment",
            )
        return self


class AccessConfig(_Model):
    # Who may deploy through a freeze window (`deploy --override-freeze --reason ...`), and who
    # is admin on every environment for the API (docs/access.md).
    admins: Annotated[list[str], AfterValidator(_user_names("admins"))] = Field(
        default_factory=list
    )
    oidc: OidcConfig | None = None


class GatesConfig(_Model):
    """What must hold before a release may go to an environment (resolved, see docs/promotion.md)."""

    after: str | None = None
    checks: list[str] = Field(default_factory=list)
    soak: float = 0.0
    approvals: int = 0
    approvers: list[str] = Field(default_factory=list)
    freeze: list[str] = Field(default_factory=list)
    timezone: str = "UTC"
    require_tag: bool = False


class EnvironmentConfig(_Model):
    # Partial overrides, validated once merged into the base (see resolve_environment), so that
    # errors can point at the override's own key.
    services: dict[str, dict[str, Any]] = Field(default_factory=dict)
    rollout: dict[str, Any] = Field(default_factory=dict)
    hooks: dict[str, Any] = Field(default_factory=dict)
    migrations: dict[str, Any] = Field(default_factory=dict)
    # Gates (docs/promotion.md). `after` and loops between environments are checked by
    # resolve_environment, which knows the other environments.
    after: EnvironmentName | None = None
    checks: list[CheckName] = Field(default_factory=list)
    soak: Duration = 0.0
    approvals: Annotated[int, AfterValidator(_non_negative)] | None = None
    approvers: Annotated[list[str], AfterValidator(_user_names("approvers"))] = Field(
        default_factory=list
    )
    freeze: list[FreezeText] = Field(default_factory=list)
    timezone: TimeZone | None = None
    require_tag: bool = False
    secrets: SecretsConfig | None = None

    @field_validator("checks")
    @classmethod
    def _distinct_checks(cls, value: list[str]) -> list[str]:
        for index, name in enumerate(value):
            if name in value[:index]:
                raise LocatedValueError(f"check {name!r} is listed twice", str(index))
        return value

    @model_validator(mode="after")
    def _gates_fit(self) -> EnvironmentConfig:
        if self.soak > 0 and self.after is None:
            raise LocatedValueError(
                'soak is measured in the environment named by after: set after = "staging" '
                "(or the environment to soak in)",
                "soak",
            )
        if self.approvals and self.approvers and self.approvals > len(self.approvers):
            raise LocatedValueError(
                f"approvals = {self.approvals} but only {len(self.approvers)} approvers are "
                "listed: nobody could ever deploy",
                "approvals",
            )
        if self.approvals == 0 and self.approvers:
            raise LocatedValueError(
                "approvers are listed but approvals = 0: remove approvals (1 by default) or "
                "the approvers",
                "approvals",
            )
        return self

    def gates(self, app_timezone: str) -> GatesConfig:
        approvals = self.approvals if self.approvals is not None else (1 if self.approvers else 0)
        return GatesConfig(
            after=self.after,
            checks=list(self.checks),
            soak=self.soak,
            approvals=approvals,
            approvers=list(self.approvers),
            freeze=list(self.freeze),
            timezone=self.timezone or app_timezone,
            require_tag=self.require_tag,
        )


class ResolvedEnvironment(_Model):
    """One environment with its overrides applied: what the engine deploys."""

    name: str
    app: str
    services: dict[str, ServiceConfig]
    rollout: RolloutConfig
    proxy: ProxyConfig
    hooks: HooksConfig = Field(default_factory=HooksConfig)
    notifications: list[NotificationConfig] = Field(default_factory=list)
    gates: GatesConfig = Field(default_factory=GatesConfig)
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)
    migrations: MigrationsConfig | None = None
    router: RouterConfig = Field(default_factory=RouterConfig)
    secrets: SecretsSettings = Field(default_factory=SecretsSettings)

    def web_services(self) -> dict[str, ServiceConfig]:
        return {name: svc for name, svc in self.services.items() if svc.kind == "web"}


class Config(_Model):
    app: AppConfig
    services: dict[ServiceName, ServiceConfig]
    rollout: RolloutConfig = Field(default_factory=RolloutConfig)
    proxy: ProxyConfig = Field(default_factory=ProxyConfig)
    router: RouterConfig = Field(default_factory=RouterConfig)
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)
    agent: AgentConfig = Field(default_factory=AgentConfig)
    state: StateConfig = Field(default_factory=StateConfig)
    hooks: HooksConfig = Field(default_factory=HooksConfig)
    notifications: list[NotificationConfig] = Field(default_factory=list)
    migrations: MigrationsConfig | None = None
    checks: dict[CheckName, CheckConfig] = Field(default_factory=dict)
    access: AccessConfig = Field(default_factory=AccessConfig)
    secrets: SecretsConfig = Field(default_factory=SecretsConfig)
    environments: dict[EnvironmentName, EnvironmentConfig] = Field(
        default_factory=dict, validate_default=True
    )
    source: Path = Path("conveyor.toml")

    @field_validator("services")
    @classmethod
    def _at_least_one_service(cls, value: dict[str, ServiceConfig]) -> dict[str, ServiceConfig]:
        if not value:
            raise ValueError("define at least one service, e.g. [services.web]")
        return value

    @field_validator("environments")
    @classmethod
    def _implicit_dev(cls, value: dict[str, EnvironmentConfig]) -> dict[str, EnvironmentConfig]:
        # Without [environments] there is still somewhere to deploy to.
        return value or {IMPLICIT_ENVIRONMENT: EnvironmentConfig()}

    @model_validator(mode="after")
    def _oidc_groups_name_environments(self) -> Config:
        oidc = self.access.oidc
        if oidc and oidc.secret_environment and oidc.secret_environment not in self.environments:
            raise LocatedValueError(
                f"environment {oidc.secret_environment!r} is not declared "
                f"(declared: {', '.join(sorted(self.environments))})",
                "access",
                "oidc",
                "secret_environment",
            )
        for group, binding in (oidc.groups if oidc else {}).items():
            env = binding.partition(":")[2]
            if env and env not in self.environments:
                raise LocatedValueError(
                    f"group {group!r} is bound to environment {env!r}, which is not declared "
                    f"(declared: {', '.join(sorted(self.environments))})",
                    "access",
                    "oidc",
                    "groups",
                    group,
                )
        return self

    def environment(self, name: str) -> ResolvedEnvironment:
        # Resolution validates the merged models, so it lives beside them, not inside them.
        from conveyor.config.environments import resolve_environment

        resolved, issues = resolve_environment(self, name)
        if resolved is None:
            first, *rest = [
                ConfigError(self.source, None, dotted_key(i.path), i.message) for i in issues
            ]
            raise ConfigError(first.file, None, first.key, first.message, more=rest)
        return resolved
