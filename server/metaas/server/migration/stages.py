"""Migration stages and what each means for reads and writes (DESIGN.md)."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final


class Role(enum.StrEnum):
    OLD = "old"
    NEW = "new"


class Stage(enum.StrEnum):
    OFF = "off"
    DUALWRITE = "dualwrite"
    SHADOW = "shadow"
    LIVE = "live"
    RAMPDOWN = "rampdown"
    COMPLETE = "complete"


@dataclass(frozen=True, slots=True)
class Plan:
    reads: Role
    shadow: Role | None
    writes: tuple[Role, ...]  # authoritative first

    @property
    def fallback_allowed(self) -> bool:
        """Reads served by the new backend may fall back to the old one while
        the old one still receives every write."""
        return self.reads is Role.NEW and Role.OLD in self.writes


PLANS: Final = {
    Stage.OFF: Plan(Role.OLD, None, (Role.OLD,)),
    Stage.DUALWRITE: Plan(Role.OLD, None, (Role.OLD, Role.NEW)),
    Stage.SHADOW: Plan(Role.OLD, Role.NEW, (Role.OLD, Role.NEW)),
    Stage.LIVE: Plan(Role.NEW, Role.OLD, (Role.NEW, Role.OLD)),
    Stage.RAMPDOWN: Plan(Role.NEW, None, (Role.NEW, Role.OLD)),
    Stage.COMPLETE: Plan(Role.NEW, None, (Role.NEW,)),
}


def parse_stage(value: str) -> Stage | None:
    try:
        return Stage(value)
    except ValueError:
        return None
