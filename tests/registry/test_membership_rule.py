"""The registry's rule for membership changes, against a real redis-server (the Lua scripts):
a join of a new name or a removal is written only once a majority of the current members
have confirmed the current version; it raises the term floor; nothing else waits for it
(docs/design.md, "One change at a time is safe"). And `ddg-node remove` as an operator
meets it: waits, then fails with one line and exit 1, having written nothing."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator

import pytest

from ddg.election.timing import TIMINGS, Timing, TimingRecord
from ddg.errors import ChangeWaiting, NotAMember, RegistryDataError
from ddg.local.embedded import EmbeddedRedis
from ddg.registry.keys import cluster_keys
from ddg.registry.records import Member, Membership, members_hash
from ddg.registry.registry import Registry

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    with EmbeddedRedis() as server:
        yield server.url


@pytest.fixture
async def registry(redis_url: str, request: pytest.FixtureRequest) -> AsyncIterator[Registry]:
    reg = Registry(redis_url, request.node.name.replace("[", "-").replace("]", ""),
                   timeout=2.0)
    yield reg
    await reg.close()


def member(name: str, i: int) -> Member:
    return Member(name, f"http://127.0.0.1:{4000 + i}", node_id=f"{i:032x}")


async def confirm(reg: Registry, name: str, term: int = 1) -> None:
    m = await reg.read()
    assert await reg.confirm_version(name, m.confirmation_by(term))


async def bootstrap(reg: Registry) -> str:
    cid, created = await reg.create(member("a", 1), TimingRecord.first(Timing()))
    assert created
    return cid


async def test_a_change_waits_for_a_majority_of_the_current_members(registry: Registry) -> None:
    reg = registry
    await bootstrap(reg)
    with pytest.raises(ChangeWaiting) as held:
        await reg.add(member("b", 2), cluster_id=None)
    assert (held.value.version, held.value.members, held.value.waiting_for) == (1, 1, ("a",))
    assert "not by a" in str(held.value)
    m = await reg.read()
    assert (m.version, sorted(m.names)) == (1, ["a"])  # nothing written
    await confirm(reg, "a", term=3)
    assert (await reg.add(member("b", 2), cluster_id=None)).version == 2
    m = await reg.read("a")
    assert m.term_floor == 3 and m.confirmation == "1:" + members_hash({"a"}) + ":3"
    assert not m.confirmed_in(m.confirmation)  # a's is of version 1; this is version 2
    # two members: one confirmation is not a majority
    await confirm(reg, "a", term=4)
    with pytest.raises(ChangeWaiting) as held:
        await reg.add(member("c", 3), cluster_id=None)
    assert held.value.waiting_for == ("b",)
    await confirm(reg, "b", term=2)
    assert (await reg.add(member("c", 3), cluster_id=None)).version == 3
    assert (await reg.read()).term_floor == 4  # the highest term among the confirmations
    # a removal passes the same rule: 2 of 3
    await confirm(reg, "a")
    with pytest.raises(ChangeWaiting):
        await reg.remove("c")
    await confirm(reg, "c")
    assert await reg.remove("c") == 4
    assert sorted((await reg.read()).names) == ["a", "b"]


async def test_what_the_rule_does_not_hold_back(registry: Registry) -> None:
    """An idempotent re-add, a member's data dir at a new address (the set of names is the
    same), a restore of what Redis lost, and an operator's --force."""
    reg = registry
    cid = await bootstrap(reg)
    await confirm(reg, "a")
    await reg.add(member("b", 2), cluster_id=None)  # version 2, confirmed by nobody yet
    assert (await reg.add(member("b", 2), cluster_id=cid)).version == 2
    moved = Member("b", "http://127.0.0.1:5002", node_id=member("b", 2).node_id)
    assert (await reg.add(moved, cluster_id=cid)).version == 3
    snapshot = await reg.read()
    before_flush = snapshot.version
    await reg._redis.delete(*cluster_keys(reg.cluster))  # Redis lost this cluster's data
    assert await reg.restore(snapshot) == before_flush + 1
    m = await reg.read()
    assert sorted(m.names) == ["a", "b"] and m.term_floor == 0
    with pytest.raises(ChangeWaiting):  # the confirmations went with the data
        await reg.add(member("c", 3), cluster_id=cid)
    assert await reg.remove("b", force=True) == before_flush + 2
    with pytest.raises(NotAMember):
        await reg.remove("b", force=True)


async def test_a_confirmation_counts_only_for_the_set_of_names_it_saw(
        registry: Registry) -> None:
    """The same version number with other members (a history forked by a Redis that lost
    data) is not confirmed by it; a non-member's confirmation is refused."""
    reg = registry
    await bootstrap(reg)
    m = await reg.read()
    forked = Membership(m.version, {"a": member("a", 1), "z": member("z", 9)}, m.cluster_id)
    assert await reg.confirm_version("a", forked.confirmation_by(1))
    with pytest.raises(ChangeWaiting):
        await reg.add(member("b", 2), cluster_id=None)
    assert not await reg.confirm_version("stranger", m.confirmation_by(1))
    assert await reg._redis.hget(reg.keys.version_seen, "stranger") is None


async def test_remove_waits_for_the_confirmations_that_arrive_meanwhile(
        registry: Registry) -> None:
    reg = registry
    await bootstrap(reg)
    await confirm(reg, "a")
    await reg.add(member("b", 2), cluster_id=None)

    async def later() -> None:
        await asyncio.sleep(0.3)
        await confirm(reg, "a")
        await confirm(reg, "b")

    t0 = time.monotonic()
    task = asyncio.create_task(later())
    assert await reg.remove("b", wait=5.0) == 3
    assert 0.3 <= time.monotonic() - t0 < 2.0
    await task


async def test_a_timing_change_is_finalized_only_once_every_member_confirmed_the_version(
        registry: Registry) -> None:
    """review16 #1: removing the one member that had not confirmed a timing change (a goose
    cut off from Redis, still leading under the old, longer lease) finalized the change at the
    next read, and the others elected on the short timing inside that lease. The finalize
    now also waits until every member confirmed the current membership version: a member
    does that a lease wait after it adopted the removal, when the removed goose's last lease
    (acknowledged by one of them before) has ended."""
    reg = registry
    await bootstrap(reg)
    for i, name in enumerate("bcd", start=2):
        await confirm(reg, "a")
        for other in "bcd"[:i - 2]:
            await confirm(reg, other)
        await reg.add(member(name, i), cluster_id=None)
    for name in "abcd":
        await confirm(reg, name)
    _, changing = await reg.change_timing(lambda _: TIMINGS["fast"])
    assert changing is not None and changing.changing
    for name in "bcd":  # a is cut off from Redis: it never confirms
        finalized, waiting = await reg.confirm_timing(name, changing, changing.to_json())
    assert (finalized, waiting) == (False, ("a",))
    await reg.remove("a")  # b, c, d confirmed version 4: the gate lets it through
    # b, c, d read the removal: every member confirmed the record, not yet version 5
    assert await reg.confirm_timing(None, changing, changing.to_json()) == (False,
                                                                             ("b", "c", "d"))
    assert (await reg.read_timing()).record == changing
    await confirm(reg, "b")
    await confirm(reg, "c")
    assert await reg.confirm_timing(None, changing, changing.to_json()) == (False, ("d",))
    await confirm(reg, "d")  # a lease wait after d adopted version 5
    assert await reg.confirm_timing("d", changing, changing.to_json()) == (True, None)
    assert (await reg.read_timing()).record == changing.finalized()


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ddg", *args], capture_output=True, text=True,
                          timeout=60)


def test_ddg_node_remove_waits_then_fails_with_one_line_writing_nothing(redis_url: str) -> None:
    cluster = "cli-remove"

    async def setup() -> None:
        reg = Registry(redis_url, cluster, timeout=2.0)
        try:
            await bootstrap(reg)
            await confirm(reg, "a")
            await reg.add(member("b", 2), cluster_id=None)  # version 2: nobody confirmed it
        finally:
            await reg.close()

    asyncio.run(setup())
    t0 = time.monotonic()
    out = cli("remove", "b", "--redis-url", redis_url, "--cluster", cluster, "--timeout", "0.5")
    took = time.monotonic() - t0
    assert out.returncode == 1 and out.stdout == ""
    assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr
    assert out.stderr.startswith("ddg-node: error: b not removed (nothing written) after 0.5 s:")
    assert "membership version 2" in out.stderr and "not by a, b" in out.stderr
    assert 0.5 <= took < 10
    bad = cli("remove", "b", "--redis-url", redis_url, "--cluster", cluster, "--timeout", "-1")
    assert bad.returncode == 1 and bad.stderr.count("\n") == 1 and "--timeout" in bad.stderr

    async def members() -> tuple[int, list[str]]:
        reg = Registry(redis_url, cluster, timeout=2.0)
        try:
            m = await reg.read()
            return m.version, sorted(m.names)
        finally:
            await reg.close()

    assert asyncio.run(members()) == (2, ["a", "b"])
    forced = cli("remove", "b", "--redis-url", redis_url, "--cluster", cluster, "--force")
    assert forced.returncode == 0, forced.stderr
    assert asyncio.run(members()) == (3, ["a"])


def test_members_json_keeps_the_term_floor() -> None:
    """A node restarted while Redis is away starts on members.json: the floor of the version
    it holds comes with it (a file from before has none)."""
    m = Membership(4, {"a": member("a", 1)}, "c" * 32, term_floor=9)
    back = Membership.from_json(m.to_json())
    assert back == m and back.term_floor == 9
    plain = Membership(4, {"a": member("a", 1)}, "c" * 32)
    assert "term_floor" not in plain.to_json()
    assert Membership.from_json(plain.to_json()).term_floor == 0
    for bad in (-1, True, "9", 2**53):
        with pytest.raises(RegistryDataError, match="term_floor"):
            Membership.from_json({**m.to_json(), "term_floor": bad})
