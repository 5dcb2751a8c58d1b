"""The start-up check of ``--flags``' file.

While serving, a flag file that changes for the worse is rejected and the
last good flags stay (migration/flags.py). At start there are no last good
flags, so a file that cannot be read, or that gives a stage or a check ratio
the router would not take, stops the server with a message naming the
setting, the flag and its variant.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from metaas.server.config import ConfigError, MigrationConfig, setting_of

_FLAGD_FILE = (None, "flagd-file")


def check_flag_file(config: MigrationConfig) -> None:
    """Refuse the flag file of ``config``, when it is read at start, unless
    every variant of its migration flags is one they accept."""
    path = config.flags_file
    if path is None or config.flags_provider not in _FLAGD_FILE:
        return
    from metaas.server.migration.flags import RATIO_FLAG, STAGE_FLAG
    from metaas.server.migration.stages import Stage

    label = setting_of(MigrationConfig, "flags_file").label
    flags = _flags_of(_load(path, label), path, label)
    stages = [stage.value for stage in Stage]
    accepted: dict[str, tuple[str, Callable[[Any], bool]]] = {
        STAGE_FLAG: (", ".join(stages[:-1]) + f" or {stages[-1]}", lambda v: v in stages),
        RATIO_FLAG: ("a number from 0 to 1", _is_ratio),
    }
    for name, (description, accepts) in accepted.items():
        flag = flags.get(name)
        if flag is None:
            continue  # every app gets the flag's default: off, or no checks
        variants = flag.get("variants") if isinstance(flag, dict) else None
        if not isinstance(variants, dict):
            raise ConfigError(label, str(path), f'a flagd flag file whose {name} has "variants"')
        for variant, value in variants.items():
            if not accepts(value):
                raise ConfigError(
                    f"{label} ({path}), flag {name}, variant {variant!r}", value, description
                )


def _load(path: Path, label: str) -> Any:
    # flagd's file provider reads YAML by this suffix, and JSON otherwise.
    try:
        text = path.read_text()
    except OSError as error:
        accepted = f"a readable flagd flag file ({error.strerror})"
        raise ConfigError(label, str(path), accepted) from None
    if path.suffix == ".yaml":
        import yaml  # type: ignore[import-untyped]  # no stubs; flagd's own dependency

        try:
            return yaml.safe_load(text)
        except yaml.YAMLError as error:
            problem = " ".join(str(error).split())
            raise ConfigError(label, str(path), f"a flagd flag file in YAML ({problem})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise ConfigError(
            label,
            str(path),
            f"a flagd flag file in JSON (line {error.lineno}, column {error.colno}: {error.msg})",
        ) from None


def _flags_of(document: Any, path: Path, label: str) -> dict[str, Any]:
    flags = document.get("flags") if isinstance(document, dict) else None
    if not isinstance(flags, dict):
        raise ConfigError(label, str(path), 'a flagd flag file: an object with "flags"')
    return flags


def _is_ratio(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value <= 1
