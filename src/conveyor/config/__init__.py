"""conveyor.toml: models, loading with located errors, and the `conveyor init` template."""

from conveyor.config.loader import find_config, load_config
from conveyor.config.models import (
    AgentConfig,
    AppConfig,
    Config,
    ConfigError,
    EnvironmentConfig,
    HealthConfig,
    ProxyConfig,
    ResolvedEnvironment,
    RolloutConfig,
    ServiceConfig,
)

__all__ = [
    "AgentConfig",
    "AppConfig",
    "Config",
    "ConfigError",
    "EnvironmentConfig",
    "HealthConfig",
    "ProxyConfig",
    "ResolvedEnvironment",
    "RolloutConfig",
    "ServiceConfig",
    "find_config",
    "load_config",
]
