"""Click options made from the settings' declarations (metaas.server.config).

A setting's flag, environment variable, default and help come from its
declaration, so an option cannot drift from the setting it sets. Its errors,
click's own (``'x' is not a valid float``) as well as the settings' checks,
name the variable and the flag on one line and exit with status 2.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from metaas.server.cli._errors import SettingError
from metaas.server.cli._params import TIMESTAMP
from metaas.server.config import Kind, Setting

F = TypeVar("F", bound=Callable[..., Any])

_TYPES: dict[Kind, click.ParamType[Any, Any]] = {
    Kind.TEXT: click.STRING,
    Kind.INTEGER: click.INT,
    Kind.NUMBER: click.FLOAT,
    Kind.PATH: click.Path(path_type=Path),
    Kind.TIME: TIMESTAMP,
}


class SettingOption(click.Option):
    """An option whose errors name its variable and flag."""

    def __init__(self, param_decls: list[str], *, setting: Setting, **attrs: Any) -> None:
        super().__init__(param_decls, **attrs)
        self.setting = setting

    def get_error_hint(self, ctx: click.Context | None) -> str:
        return self.setting.label


class SettingsCommand(click.Command):
    """A command taking settings: a value click cannot parse is reported like
    one a setting refuses, on one line."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except click.BadParameter as error:
            raise SettingError(error.format_message()) from error


def setting_option(setting: Setting, *, help_text: str | None = None) -> Callable[[F], F]:
    """The click option of ``setting`` (``help_text`` replaces its help)."""
    accepted = setting.accepts
    described = help_text or setting.help
    if accepted is not None and not accepted.choices:
        described += f" Accepts {accepted.description}."
    attrs: dict[str, Any] = {
        "cls": SettingOption,
        "setting": setting,
        "envvar": setting.env,
        "help": described,
        "show_envvar": True,
        "show_default": True,
    }
    if setting.kind is Kind.SWITCH:
        decls = [f"{setting.flag}/--no-{setting.flag.removeprefix('--')}"]
        attrs["default"] = setting.default
    elif setting.kind is Kind.FLAG:
        decls = [setting.flag]
        attrs |= {"is_flag": True, "default": setting.default, "show_default": False}
    else:
        decls = [setting.flag]
        attrs["default"] = setting.shown(setting.default)
        if accepted is not None and accepted.choices:
            attrs["type"] = click.Choice(accepted.choices, case_sensitive=False)
        else:
            attrs["type"] = _TYPES[setting.kind]
    option: Callable[[F], F] = click.option(*decls, **attrs)
    return option


def setting_options(*settings: Setting) -> Callable[[F], F]:
    """The options of every setting given, listed in the help in that order."""

    def decorate(command: F) -> F:
        for setting in reversed(settings):
            command = setting_option(setting)(command)
        return command

    return decorate
