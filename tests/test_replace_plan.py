"""The replace plan: which steps from which state, and which states it refuses (no lab needed)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from pipeline.replace.plan import (
    EXIT_CHANGES,
    EXIT_NOTHING,
    PlanError,
    make_plan,
    next_step,
    simulate,
)
from pipeline.replace.state import CT, ROLE_TEMPLATE, World
from pipeline.replace.template_file import TemplateRef

OLD = TemplateRef("meridian_1_amd64-aaaaaaaaaaaa.tar.zst", "a" * 64)
NEW = TemplateRef("meridian_2_amd64-bbbbbbbbbbbb.tar.zst", "b" * 64)
VOL = "local-lvm:vm-457-disk-1"
PARKED = "local-lvm:vm-9457-disk-1"


def ct(**kw) -> CT:
    base = {"exists": True, "ours": True, "running": True, "template": OLD, "volume": VOL}
    return CT(457, **{**base, **kw})


def holder(**kw) -> CT:
    return CT(9457, **{"exists": True, "ours": True, "holder": True, **kw})


DEPLOYED = World(ct=ct(), holder=holder(), uploaded=True, seeded=True, gated=True, volume_known=True, known=True)

REPLACE = ("stop", "park", "delete", "create", "unpark", "start", "seed", "gate")


@pytest.mark.parametrize(
    ("world", "target", "expected"),
    [
        pytest.param(World(ct=CT(457), holder=CT(9457)), NEW,
                     ("upload", "create", "start", "seed", "gate"), id="first-deploy"),
        pytest.param(DEPLOYED, OLD, (), id="nothing-to-do"),
        pytest.param(replace(DEPLOYED, uploaded=False), NEW,
                     ("upload", *REPLACE), id="replace"),
        pytest.param(World(ct=ct(running=False), holder=holder(), uploaded=True, volume_known=True, known=True),
                     OLD, ("start", "seed", "gate"), id="stopped-same-template"),
        pytest.param(World(ct=CT(457), holder=holder(volume=PARKED), uploaded=True, volume_known=True, known=True),
                     NEW, ("create", "unpark", "start", "seed", "gate"), id="crash-after-delete"),
        pytest.param(World(ct=ct(template=NEW, volume=None, running=False), holder=holder(volume=PARKED),
                           uploaded=True, volume_known=True, known=True),
                     NEW, ("unpark", "start", "seed", "gate"), id="crash-after-create"),
        pytest.param(World(ct=ct(template=NEW, volume=None, running=True), holder=holder(volume=PARKED),
                           uploaded=True, volume_known=True, known=True),
                     NEW, ("stop", "unpark", "start", "seed", "gate"), id="started-without-volume"),
        pytest.param(World(ct=ct(template=NEW), holder=holder(), uploaded=True, seeded=True,
                           volume_known=True, known=True),
                     NEW, ("gate",), id="crash-before-gate"),
        pytest.param(World(ct=ct(template=NEW), holder=holder(), uploaded=True), NEW, REPLACE,
                     id="created-by-another-state-dir"),
        pytest.param(World(ct=ct(template=NEW, volume=None), holder=holder(volume=PARKED), uploaded=True,
                           volume_known=True),
                     NEW, ("stop", "delete", "create", "unpark", "start", "seed", "gate"),
                     id="killed-during-create-task"),
    ],
)
def test_plan_steps(world: World, target: TemplateRef, expected: tuple[str, ...]) -> None:
    plan = make_plan(world, target, adopt=False)
    assert plan.steps == expected
    assert plan.exit_code == (EXIT_CHANGES if expected else EXIT_NOTHING)
    assert len(plan.lines) == len(expected)


def test_create_after_first_deploy_carries_a_new_volume_only_when_none_is_parked() -> None:
    first = simulate(World(ct=CT(457), holder=holder(), uploaded=True), "create", NEW)
    assert first.ct.volume == "(new volume)"
    again = simulate(World(ct=CT(457), holder=holder(volume=PARKED), uploaded=True), "create", NEW)
    assert again.ct.volume is None and again.holder.volume == PARKED


def _replace_states() -> list[World]:
    """Every state a replace passes through, as a crash would leave it."""
    world = replace(DEPLOYED, uploaded=False)
    states = [world]
    for _ in range(20):
        step = next_step(world, NEW)
        if step is None:
            return states
        world = simulate(world, step, NEW)
        states.append(world)
    raise AssertionError("no convergence")


@pytest.mark.parametrize("start", _replace_states(), ids=lambda w: w.summary())
def test_rerun_from_any_state_converges_and_never_deletes_the_volume(start: World) -> None:
    world = start
    for _ in range(20):
        make_plan(world, NEW, adopt=False)  # every intermediate state is acceptable to rerun
        step = next_step(world, NEW)
        if step is None:
            break
        if step == "delete":
            assert world.ct.volume is None and world.holder.volume
        world = simulate(world, step, NEW)
    assert world.ct.template == NEW and world.ct.running and world.gated
    assert world.ct.volume and not world.holder.volume


@pytest.mark.parametrize(
    ("world", "adopt", "message"),
    [
        pytest.param(World(ct=ct(ours=False), holder=CT(9457)), False,
                     "CT 457 exists but was not created by this pipeline", id="not-ours"),
        pytest.param(World(ct=ct(ours=False, volume=None), holder=CT(9457)), True,
                     "CT 457 has no credentials volume", id="adopt-without-volume"),
        pytest.param(World(ct=ct(volume=None, mp0_elsewhere="/srv"), holder=CT(9457)), False,
                     "CT 457: mp0 is mounted at /srv, not /var/lib/meridian", id="mp0-elsewhere"),
        pytest.param(World(ct=ct(), holder=CT(9457, exists=True)), False,
                     "CT 9457 exists but is not this pipeline's holder", id="holder-not-ours"),
        pytest.param(World(ct=ct(), holder=holder(running=True)), False,
                     "holder CT 9457 is running", id="holder-running"),
        pytest.param(World(ct=ct(lock="backup"), holder=holder()), False,
                     "CT 457 is running, locked (backup); credentials volume "
                     "local-lvm:vm-457-disk-1 is on CT 457", id="locked"),
        pytest.param(World(ct=ct(), holder=holder(volume=PARKED)), False,
                     "both CT 457 and CT 9457 carry an mp0 volume", id="two-volumes"),
        pytest.param(World(ct=CT(457), holder=holder(), volume_known=True, known=True), False,
                     "the credentials volume is neither on CT 457 nor on CT 9457", id="volume-lost"),
    ],
)
def test_plan_refuses(world: World, adopt: bool, message: str) -> None:
    with pytest.raises(PlanError) as err:
        make_plan(world, NEW, adopt=adopt)
    assert message in str(err.value)
    assert "nothing was changed" in str(err.value)


def test_adopt_takes_over_a_foreign_container_with_a_credentials_volume() -> None:
    world = World(ct=ct(ours=False, template=None), holder=CT(9457), uploaded=True)
    assert make_plan(world, NEW, adopt=True).steps == ("holder", *REPLACE)
    assert make_plan(world, NEW, adopt=True).destructive


# -- linked clones, extension swaps, pruning -----------------------------------------------

SLOTS = (9458, 9459, 9460)
LINKED = replace(DEPLOYED, linked=True, slots=SLOTS,
                 bases=(CT(9458, exists=True, ours=True, role=ROLE_TEMPLATE, template=OLD, is_template=True),),
                 keep=frozenset({OLD, NEW}))
CLONE_REPLACE = ("stop", "park", "delete", "clone", "unpark", "start", "seed", "gate")


@pytest.mark.parametrize(
    ("world", "target", "expected"),
    [
        pytest.param(World(ct=CT(457), holder=CT(9457), linked=True, slots=SLOTS), NEW,
                     ("upload", "base", "templatize", "clone", "volume", "start", "seed", "gate"),
                     id="first-deploy-linked"),
        pytest.param(replace(LINKED, uploaded=False), NEW,
                     ("upload", "base", "templatize", *CLONE_REPLACE), id="replace-linked"),
        pytest.param(replace(LINKED, bases=(*LINKED.bases, CT(9459, exists=True, ours=True, role=ROLE_TEMPLATE,
                                                               template=NEW))), NEW,
                     ("templatize", *CLONE_REPLACE), id="killed-after-base-create"),
        pytest.param(replace(LINKED, uploaded=False, swappable=True, swap_units=("meridian.service",)), NEW,
                     ("upload", "stage", "switch", "gate"), id="swap"),
        pytest.param(replace(LINKED, swappable=True, staged=True), NEW, ("switch", "gate"), id="swap-staged"),
        pytest.param(replace(LINKED, ct=ct(template=NEW), gated=False), NEW, ("gate",), id="killed-after-switch"),
        pytest.param(replace(LINKED, force_replace="dep-1", ct=ct(deployment="dep-1")), OLD, CLONE_REPLACE,
                     id="full-replace-same-template"),
    ],
)
def test_linked_plan_steps(world: World, target: TemplateRef, expected: tuple[str, ...]) -> None:
    assert make_plan(world, target, adopt=False).steps == expected


def test_slow_steps_of_a_linked_replace_all_come_before_the_stop() -> None:
    steps = make_plan(replace(LINKED, uploaded=False), NEW, adopt=False).steps
    window = steps[steps.index("stop"):steps.index("seed")]
    assert not {"upload", "base", "templatize", "create"} & set(window)


def test_prune_keeps_the_current_and_previous_template_and_what_a_clone_depends_on() -> None:
    def base(vmid: int, char: str) -> CT:
        return CT(vmid, exists=True, ours=True, role=ROLE_TEMPLATE, is_template=True,
                  template=TemplateRef(f"t{char}.tar.zst", char * 64))
    bases = (base(9458, "a"), base(9459, "c"), base(9460, "d"))
    world = replace(DEPLOYED, bases=bases, keep=frozenset(b.template for b in bases[1:] if b.template))
    assert world.prunable() == (9458,)
    assert simulate(world, "prune", NEW).bases == bases[1:]
    depended = replace(world, ct=ct(base=9458))
    assert depended.prunable() == ()
    assert replace(world, holder=holder(base=9458)).prunable() == ()


def test_stale_uploads_are_deleted_last_and_named_in_the_plan() -> None:
    stale = ("local:vztmpl/meridian_0_amd64-000000000000.tar.zst",)
    tidy = make_plan(replace(DEPLOYED, stale_uploads=stale), OLD, adopt=False)
    assert tidy.steps == ("prune_uploads",) and tidy.exit_code == EXIT_CHANGES and not tidy.destructive
    assert tidy.lines == (f"delete archives this pipeline uploaded that no kept deployment needs: {stale[0]}",)
    upgrade = make_plan(replace(DEPLOYED, uploaded=False, stale_uploads=stale), NEW, adopt=False)
    assert upgrade.steps == ("upload", *REPLACE, "prune_uploads")


def test_new_template_ct_takes_a_free_slot_prunes_for_one_or_refuses() -> None:
    world = replace(LINKED, uploaded=True)
    assert world.base_vmid(NEW) == 9459
    taken = tuple(CT(v, exists=True, ours=True, role=ROLE_TEMPLATE, is_template=True,
                     template=TemplateRef(f"t{v}.tar.zst", str(v) * 16)) for v in SLOTS)
    stale = replace(world, bases=taken)
    assert make_plan(stale, NEW, adopt=False).steps[:2] == ("prune", "base")
    needed = replace(stale, keep=frozenset(b.template for b in taken if b.template))
    with pytest.raises(PlanError) as err:
        make_plan(needed, NEW, adopt=False)
    assert "no free CTID for a new CT template" in str(err.value)
