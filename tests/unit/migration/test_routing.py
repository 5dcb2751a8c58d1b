"""Routing: each app's stage to the roles that serve its reads, receive its
writes and are read in its shadow."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from metaas.server.migration.flags import FixedFlags
from metaas.server.migration.routing import Routing
from metaas.server.migration.stages import PLANS, Role, Stage, parse_stage
from metaas.server.storage import Storage, StorageContext, open_storage
from tests.conformance.conftest import RETENTION_MS

OLD, NEW = Role.OLD, Role.NEW


@pytest.fixture
async def stores(tmp_path: Path) -> AsyncIterator[tuple[Storage, Storage]]:
    old = await open_storage(f"sqlite:///{tmp_path / 'old.db'}", StorageContext(RETENTION_MS))
    new = await open_storage(f"sqlite:///{tmp_path / 'new.db'}", StorageContext(RETENTION_MS))
    yield old, new
    await old.close()
    await new.close()


@pytest.mark.parametrize(
    ("stage", "reads", "shadow", "writes", "fallback"),
    [
        (Stage.OFF, OLD, None, (OLD,), False),
        (Stage.DUALWRITE, OLD, None, (OLD, NEW), False),
        (Stage.SHADOW, OLD, NEW, (OLD, NEW), False),
        (Stage.LIVE, NEW, OLD, (NEW, OLD), True),
        (Stage.RAMPDOWN, NEW, None, (NEW, OLD), True),
        (Stage.COMPLETE, NEW, None, (NEW,), False),
    ],
)
def test_each_stage_has_its_plan(
    stage: Stage,
    reads: Role,
    shadow: Role | None,
    writes: tuple[Role, ...],
    fallback: bool,
) -> None:
    plan = PLANS[stage]
    assert (plan.reads, plan.shadow, plan.writes) == (reads, shadow, writes)
    assert plan.fallback_allowed is fallback


@pytest.mark.parametrize("stage", list(Stage))
def test_every_plan_writes_first_where_it_reads_and_shadows_the_other(stage: Stage) -> None:
    plan = PLANS[stage]
    assert plan.writes[0] is plan.reads
    assert len(set(plan.writes)) == len(plan.writes)
    if plan.shadow is not None:
        assert plan.shadow is not plan.reads
        assert plan.shadow in plan.writes  # a shadow without the writes always differs


@pytest.mark.parametrize(
    ("stage", "targets"),
    [
        (Stage.OFF, ("old",)),
        (Stage.DUALWRITE, ("old", "new")),
        (Stage.SHADOW, ("old", "new")),
        (Stage.LIVE, ("new", "old")),
        (Stage.RAMPDOWN, ("new", "old")),
        (Stage.COMPLETE, ("new",)),
    ],
)
async def test_write_targets_are_authoritative_first(
    stores: tuple[Storage, Storage], stage: Stage, targets: tuple[str, ...]
) -> None:
    old, new = stores
    routing = Routing(old, new, FixedFlags(stage, 0.5))
    assert routing.write_targets("shop") == targets


async def test_an_enabled_routing_follows_the_flags(stores: tuple[Storage, Storage]) -> None:
    old, new = stores
    routing = Routing(old, new, FixedFlags(Stage.LIVE, 0.25))
    assert routing.enabled
    route = routing.route("shop")
    assert (route.app, route.stage, route.plan) == ("shop", Stage.LIVE, PLANS[Stage.LIVE])
    assert routing.check_ratio("shop") == 0.25
    assert routing.storage(OLD) is old
    assert routing.storage(NEW) is new
    assert routing.backend_name(NEW) == new.name
    # The flags are re-read for every route.
    routing.flags = FixedFlags(Stage.RAMPDOWN, 1.0)
    assert routing.route("shop").stage is Stage.RAMPDOWN
    assert routing.check_ratio("shop") == 1.0


@pytest.mark.parametrize("stage", list(Stage))
async def test_a_disabled_routing_is_always_off_and_never_checks(
    stores: tuple[Storage, Storage], stage: Stage
) -> None:
    old, _ = stores
    routing = Routing(old, None, FixedFlags(stage, 1.0))
    assert not routing.enabled
    route = routing.route("shop")
    assert (route.stage, route.plan) == (Stage.OFF, PLANS[Stage.OFF])
    assert routing.check_ratio("shop") == 0.0
    assert routing.write_targets("shop") == ("old",)
    assert routing.backend_name(NEW) == ""
    assert routing.backend_name(OLD) == old.name
    with pytest.raises(KeyError):
        routing.storage(NEW)


async def test_without_flags_every_app_is_off(stores: tuple[Storage, Storage]) -> None:
    old, new = stores
    routing = Routing(old, new)
    assert routing.route("shop").stage is Stage.OFF
    assert routing.check_ratio("shop") == 0.0


@pytest.mark.parametrize(("text", "stage"), [(s.value, s) for s in Stage] + [("Live", None)])
def test_parse_stage_accepts_the_stage_names_only(text: str, stage: Stage | None) -> None:
    assert parse_stage(text) is stage
    assert parse_stage("") is None
