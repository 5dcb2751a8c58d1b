"""Typed, validated configuration, one frozen dataclass per component.

Each setting of ``metaas serve`` is declared once, on the field it sets, with
:func:`setting`: its default, flag, environment variable, help and the values
it accepts. The CLI makes its options from these declarations
(``cli/_options.py``) and :meth:`Settings.from_values` the dataclasses from
what they parsed. Every dataclass checks its fields against their
declarations when it is made, however it is made, so a bad value fails fast
with a message naming the variable and the flag and what they accept
(``METAAS_SHADOW_TIMEOUT_S / --shadow-timeout-s: invalid value 0.0; expected
seconds > 0``). Fields no flag sets declare what they accept with
:func:`checked`; rules between fields stay in ``__post_init__``.
"""

from metaas.server.config._data import (
    MAX_PROJECTIONS,
    CodecConfig,
    IngestConfig,
    QueryConfig,
    RetentionConfig,
    ViewsConfig,
)
from metaas.server.config._declaration import (
    Accepts,
    ConfigError,
    Kind,
    Setting,
    build,
    declared,
    setting_of,
)
from metaas.server.config._kafka import KafkaConfig
from metaas.server.config._migration import MigrationConfig
from metaas.server.config._serving import LOG_LEVEL, LimitsConfig, SecurityConfig, ServerConfig
from metaas.server.config._settings import Settings

__all__ = [
    "LOG_LEVEL",
    "MAX_PROJECTIONS",
    "Accepts",
    "CodecConfig",
    "ConfigError",
    "IngestConfig",
    "KafkaConfig",
    "Kind",
    "LimitsConfig",
    "MigrationConfig",
    "QueryConfig",
    "RetentionConfig",
    "SecurityConfig",
    "ServerConfig",
    "Setting",
    "Settings",
    "ViewsConfig",
    "build",
    "declared",
    "setting_of",
]
