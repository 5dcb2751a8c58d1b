"""Routing: each app's stage, from the flags, to the roles that serve its
reads, receive its writes and are read in its shadow."""

from __future__ import annotations

from dataclasses import dataclass

from metaas.server.migration.flags import FixedFlags, FlagSource
from metaas.server.migration.stages import PLANS, Plan, Role, Stage
from metaas.server.storage.base import Storage


@dataclass(frozen=True, slots=True)
class Route:
    """An app's stage and plan, evaluated once per request."""

    app: str
    stage: Stage
    plan: Plan


class Routing:
    """The backends by role, and the flags that stage each app."""

    def __init__(self, old: Storage, new: Storage | None, flags: FlagSource | None = None) -> None:
        self._storages = {Role.OLD: old} | ({Role.NEW: new} if new is not None else {})
        self.flags = flags or FixedFlags()

    @property
    def enabled(self) -> bool:
        """Whether a migration (a new backend) is configured."""
        return Role.NEW in self._storages

    def storage(self, role: Role) -> Storage:
        return self._storages[role]

    def backend_name(self, role: Role) -> str:
        """The backend's name, or "" when no backend plays ``role``."""
        return self._storages[role].name if role in self._storages else ""

    def route(self, app: str) -> Route:
        stage = self.flags.stage(app) if self.enabled else Stage.OFF
        return Route(app, stage, PLANS[stage])

    def check_ratio(self, app: str) -> float:
        """The share of the app's reads checked against the shadow."""
        return self.flags.check_ratio(app) if self.enabled else 0.0

    def write_targets(self, app: str) -> tuple[str, ...]:
        """Roles an app's writes go to, authoritative first."""
        return tuple(role.value for role in self.route(app).plan.writes)
