"""Migrating a live fleet from one backend to another: per-app stages by
feature flag, dual writes, sampled shadow reads compared for consistency, a
guard rail that falls back to the old backend, and verification and repair
of a time range. See docs/architecture.md ("Migration") for how one query
passes through the parts."""

from metaas.server.migration.compare import Comparison, Observation
from metaas.server.migration.flags import FixedFlags, FlagSource, open_flags
from metaas.server.migration.guard import Fallback, Guard
from metaas.server.migration.publisher import Publisher
from metaas.server.migration.router import MigrationRouter, Routed
from metaas.server.migration.routing import Route, Routing
from metaas.server.migration.shadow import LoopShadow, Shadow, ShadowRead, WorkerShadow
from metaas.server.migration.shadow_pool import ShadowPool, setup_of
from metaas.server.migration.stages import PLANS, Plan, Role, Stage
from metaas.server.migration.verify import verify_range
from metaas.server.migration.window import MigrationWindow

__all__ = [
    "PLANS",
    "Comparison",
    "Fallback",
    "FixedFlags",
    "FlagSource",
    "Guard",
    "LoopShadow",
    "MigrationRouter",
    "MigrationWindow",
    "Observation",
    "Plan",
    "Publisher",
    "Role",
    "Route",
    "Routed",
    "Routing",
    "Shadow",
    "ShadowPool",
    "ShadowRead",
    "Stage",
    "WorkerShadow",
    "open_flags",
    "setup_of",
    "verify_range",
]
