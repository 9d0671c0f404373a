"""conveyor.toml: models, loading with located errors, and the `conveyor init` template.

errors: located errors; models: the models; environments: environment resolution;
pydantic_errors: pydantic's errors in TOML's words; loader: reading the file; template: `init`.
"""

from conveyor.config.errors import ConfigError
from conveyor.config.loader import find_config, load_config
from conveyor.config.models import (
    BUILTIN_METRICS,
    DEFAULT_ANALYSIS,
    DEFAULT_PROMETHEUS_URL,
    EVENTS,
    METRICS,
    AccessConfig,
    AgentConfig,
    AnalysisCheck,
    AppConfig,
    CanaryStep,
    CheckConfig,
    Config,
    EnvironmentConfig,
    GatesConfig,
    HealthConfig,
    HookConfig,
    HooksConfig,
    NotificationConfig,
    ProxyConfig,
    ResolvedEnvironment,
    RolloutConfig,
    RuntimeConfig,
    ServiceConfig,
    StickyConfig,
)

__all__ = [
    "BUILTIN_METRICS",
    "DEFAULT_ANALYSIS",
    "DEFAULT_PROMETHEUS_URL",
    "EVENTS",
    "METRICS",
    "AccessConfig",
    "AgentConfig",
    "AnalysisCheck",
    "AppConfig",
    "CanaryStep",
    "CheckConfig",
    "Config",
    "ConfigError",
    "EnvironmentConfig",
    "GatesConfig",
    "HealthConfig",
    "HookConfig",
    "HooksConfig",
    "NotificationConfig",
    "ProxyConfig",
    "ResolvedEnvironment",
    "RolloutConfig",
    "RuntimeConfig",
    "ServiceConfig",
    "StickyConfig",
    "find_config",
    "load_config",
]
