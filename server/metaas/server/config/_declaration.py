"""How a setting is declared, checked and built (see the package's docstring)."""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Final, TypeVar

T = TypeVar("T")
_SETTING: Final = "metaas.setting"
_ACCEPTS: Final = "metaas.accepts"


class ConfigError(ValueError):
    """A setting has a value outside what it accepts. ``setting`` names it as
    an operator writes it (``METAAS_LISTEN / --listen``, ``dynamodb region``)."""

    def __init__(self, setting: str, value: object, accepted: str) -> None:
        super().__init__(f"{setting}: invalid value {value!r}; expected {accepted}")
        self.setting = setting
        self.accepted = accepted


class Kind(enum.Enum):
    """How a setting is written on the command line."""

    TEXT = "text"
    INTEGER = "integer"
    NUMBER = "number"
    PATH = "path"
    TIME = "time"  # ISO 8601 or Unix milliseconds, kept as Unix milliseconds
    SWITCH = "switch"  # --name / --no-name
    FLAG = "flag"  # --name, off unless given


@dataclass(frozen=True, slots=True)
class Accepts:
    """The values a setting accepts: a test, and its description for people."""

    description: str
    test: Callable[[Any], bool]
    choices: tuple[str, ...] = ()


def between(low: float, high: float, unit: str = "a number") -> Accepts:
    return Accepts(f"{unit} from {low} to {high}", lambda v: low <= v <= high)


def at_least(low: float, unit: str = "a number") -> Accepts:
    return Accepts(f"{unit} >= {low}", lambda v: v >= low)


def above(low: float, unit: str = "a number") -> Accepts:
    return Accepts(f"{unit} > {low}", lambda v: v > low)


def one_of(*choices: str) -> Accepts:
    return Accepts(" or ".join(choices), lambda v: v in choices, choices)


FRACTION: Final = Accepts("a fraction in (0, 1]", lambda v: 0 < v <= 1)
SINCE_1970: Final = Accepts("a time from 1970 on", lambda v: v >= 0)
READABLE_FILE: Final = Accepts("a readable file", lambda v: v is None or Path(v).is_file())


@dataclass(frozen=True, slots=True)
class Setting:
    """One setting as an operator sees it."""

    default: Any
    flag: str
    env: str
    help: str
    kind: Kind = Kind.TEXT
    accepts: Accepts | None = None
    # The command line's value to the field's (text to a tuple, "" to None).
    parse: Callable[[Any], Any] | None = None
    # The field's value as the command line writes it (None: not shown).
    show: Callable[[Any], Any] | None = None

    @property
    def name(self) -> str:
        """The option's parameter name, from its flag: ``shadow_timeout_s``."""
        return self.flag.removeprefix("--").replace("-", "_")

    @property
    def label(self) -> str:
        return f"{self.env} / {self.flag}"

    def shown(self, value: Any) -> Any:
        return value if self.show is None else self.show(value)

    def check(self, value: Any) -> None:
        """Raise a ConfigError naming the setting unless it accepts ``value``."""
        if self.accepts is not None and not self.accepts.test(value):
            shown = str(value) if isinstance(value, Path) else self.shown(value)
            raise ConfigError(self.label, shown, self.accepts.description)


def setting(
    default: T,
    flag: str,
    env: str,
    help_text: str,
    *,
    kind: Kind = Kind.TEXT,
    accepts: Accepts | None = None,
    parse: Callable[[Any], Any] | None = None,
    show: Callable[[Any], Any] | None = None,
) -> T:
    """A dataclass field set by a flag and an environment variable."""
    declared = Setting(default, flag, env, help_text, kind, accepts, parse, show)
    return field(default=default, metadata={_SETTING: declared})


def checked(default: T, accepts: Accepts) -> T:
    """A dataclass field no flag sets, with the values it accepts."""
    return field(default=default, metadata={_ACCEPTS: accepts})


def setting_of(config: type[Any], name: str) -> Setting:
    """The declaration of ``config``'s field ``name``."""
    declared: Setting = next(f for f in fields(config) if f.name == name).metadata[_SETTING]
    return declared


def declared(config: type[Any]) -> Iterator[Setting]:
    """Every setting of ``config`` and of its components, in field order."""
    for f in fields(config):
        component = _component(f)
        if _SETTING in f.metadata:
            yield f.metadata[_SETTING]
        elif component is not None:
            yield from declared(component)


def build(config: type[T], values: Mapping[str, Any]) -> T:
    """``config`` with each setting that ``values`` holds (by
    :attr:`Setting.name`; None: not given) and defaults for the others."""
    arguments: dict[str, Any] = {}
    for f in fields(config):  # type: ignore[arg-type]  # T is a dataclass
        component = _component(f)
        if _SETTING in f.metadata:
            declaration: Setting = f.metadata[_SETTING]
            value = values.get(declaration.name)
            if value is not None:
                arguments[f.name] = value if declaration.parse is None else declaration.parse(value)
        elif component is not None:
            arguments[f.name] = build(component, values)
    return config(**arguments)


def _component(f: dataclasses.Field[Any]) -> type[Any] | None:
    factory: object = f.default_factory
    return factory if isinstance(factory, type) and dataclasses.is_dataclass(factory) else None


def validate(config: Any) -> None:
    """Check every field of ``config`` against what its declaration accepts."""
    for f in fields(config):
        value = getattr(config, f.name)
        if _SETTING in f.metadata:
            f.metadata[_SETTING].check(value)
        elif _ACCEPTS in f.metadata and not f.metadata[_ACCEPTS].test(value):
            accepts: Accepts = f.metadata[_ACCEPTS]
            raise ConfigError(f"{type(config).__name__}.{f.name}", value, accepts.description)
