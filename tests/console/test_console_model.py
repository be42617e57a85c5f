"""Pure tests of ddg_tui.model: failover timing, two-geese detection, event derivation."""

from __future__ import annotations

import pytest

from ddg.client import NodeStatus, RedisInfo, Reply, Role, StatusFormatError, TimingInfo
from ddg.registry.records import Member, Membership
from ddg_tui.events import Observation
from ddg_tui.failovers import summarize_failovers
from ddg_tui.fmt import fmt_ms, fmt_uptime, natural_key
from ddg_tui.model import ClusterModel
from ddg_tui.views import header_view, row_view, rows_view

NAMES = ("n1", "n2", "n3")


def membership(*names: str, version: int = 3) -> Membership:
    return Membership(version, {n: Member(n, f"http://127.0.0.1:{7000 + i}", 0.0)
                                for i, n in enumerate(names, 1)})


def up(name: str, role: str, term: int, *, at: float, sent: float | None = None,
       goose: str | None = None, **extra: object) -> Observation:
    st = NodeStatus(name=name, role=Role(role), term=term,
                    goose=goose if goose is not None else (name if role == "goose" else None),
                    membership_version=3, **extra)  # type: ignore[arg-type]
    return Observation(name=name, reply=Reply(status=st, latency_ms=1.0),
                       sent=at - 0.001 if sent is None else sent, at=at, wall=1000 + at)


def down(name: str, *, at: float, error: str = "connection refused") -> Observation:
    return Observation(name=name, reply=Reply(error=error, latency_ms=0.5), sent=at - 0.001,
                       at=at, wall=1000 + at)


def healthy(goose: str = "n1", term: int = 1, at: float = 1.0,
            names: tuple[str, ...] = NAMES) -> ClusterModel:
    m = ClusterModel(cluster="c")
    m.apply_membership(membership(*names), at=0.0, wall=1000.0)
    for n in names:
        m.apply_observation(up(n, "goose" if n == goose else "duck", term, at=at, goose=goose))
    return m


def texts(m: ClusterModel, after: int = 0) -> list[str]:
    return [e.text for e in m.events_after(after)]


def test_first_goose_is_announced_once() -> None:
    m = healthy()
    assert m.live_goose() == "n1"
    assert sum(t.startswith("n1 is goose (term 1)") for t in texts(m)) == 1
    assert "n1 is goose (term 1) after 1.0 s without a goose" in texts(m)
    assert "n2 is duck (term 1, follows n1)" in texts(m)
    assert m.failovers == []
    assert [s.name for s in m.timeline] == ["n1"]


def test_failover_is_timed_from_the_kill_to_the_takeover_the_new_goose_reports() -> None:
    m = healthy()
    assert m.mark_goose_loss("n1", "n1 killed", at=10.0)
    m.apply_observation(down("n1", at=10.01))
    m.apply_observation(up("n2", "candidate", 2, at=10.1))
    assert header_view(m, 10.1).banner is not None and "NO GOOSE" in header_view(m, 10.1).banner
    # polled late (at 10.181), but n2 says it has been goose for 30 ms: it took over at 10.15
    m.apply_observation(up("n2", "goose", 2, sent=10.179, at=10.181, role_since_ms=30.0))
    [fo] = m.failovers
    assert (fo.old, fo.new, fo.term) == ("n1", "n2", 2)
    assert fo.duration_ms == pytest.approx(150.0)
    assert fo.uncertainty_ms == pytest.approx(1.0)
    assert "n1 killed → n2 goose after 150 ms ± 1.0 ms (term 2)" in texts(m)
    assert header_view(m, 10.2).banner is None
    assert header_view(m, 10.2).goose == "n2"


def test_a_reply_sent_before_the_kill_is_no_goose_after_it() -> None:
    m = healthy()
    m.mark_goose_loss("n1", "n1 killed", at=10.0)
    seq = m.events[-1].seq
    # In flight when the kill happened: it still says goose, with a lease, and proves nothing
    # about after the kill.
    m.apply_observation(up("n1", "goose", 1, sent=9.99, at=10.02, lease_remaining_ms=110.0))
    assert m.geese() == []
    m.apply_observation(up("n2", "duck", 1, at=10.03, goose="n1"))
    assert not any("still goose" in t for t in texts(m, seq))
    m.apply_observation(up("n3", "goose", 2, sent=10.04, at=10.05, role_since_ms=1.0,
                           lease_remaining_ms=120.0))
    assert m.tracker.split == () and not any("TWO GEESE" in t for t in texts(m, seq))
    assert m.failovers[-1].duration_ms == pytest.approx(44.0)
    assert m.failovers[-1].cause == "n1 killed"


def test_isolated_goose_keeps_its_role_until_its_lease_ends() -> None:
    m = healthy()
    assert m.mark_goose_loss("n1", "n1 isolated", at=10.0, ends_role=False)
    m.apply_observation(up("n1", "goose", 1, sent=10.05, at=10.06, isolated_from=("n2", "n3"),
                           lease_remaining_ms=60.0))
    assert m.geese() == [("n1", 1)]
    assert not any("still goose" in t for t in texts(m))
    m.apply_observation(up("n1", "duck", 1, at=10.2))
    m.apply_observation(up("n2", "goose", 2, sent=10.32, at=10.33, role_since_ms=20.0))
    assert m.failovers[-1].cause == "n1 isolated"
    assert m.failovers[-1].duration_ms == pytest.approx(305.0)
    assert texts(m)[-1] == "n1 isolated → n2 goose after 305 ms ± 5.0 ms (term 2)"


def test_a_loss_not_caused_here_is_timed_from_the_old_goose_s_last_proven_instant() -> None:
    m = healthy()
    m.apply_observation(up("n1", "goose", 1, sent=4.9, at=4.91, lease_remaining_ms=100.0))
    m.apply_observation(down("n1", at=5.2))
    assert "no goose: n1 unreachable (was goose in term 1)" in texts(m)
    m.apply_observation(up("n3", "goose", 2, sent=5.29, at=5.3, role_since_ms=100.0))
    # n1 was surely goose until 5.0; n3 took over at 5.195
    assert m.failovers[-1].duration_ms == pytest.approx(195.0)
    assert texts(m)[-1] == "n1 unreachable → n3 goose after 195 ms ± 5.0 ms (term 2)"


def test_a_failover_that_cannot_be_timed_says_so_never_zero() -> None:
    m = healthy()  # answers without a lease or role_since_ms (an older node)
    m.apply_observation(down("n1", at=5.0))
    m.apply_observation(up("n3", "goose", 2, at=5.3))
    assert m.failovers[-1].duration_ms is None
    assert texts(m)[-1].startswith("n1 unreachable → n3 goose (term 2); not timed:")
    assert m.failover_durations() == []


def test_goose_that_keeps_its_term_is_not_a_failover() -> None:
    m = healthy()
    m.apply_observation(down("n1", at=5.0, error="timeout"))
    m.apply_observation(up("n1", "goose", 1, at=5.4))
    assert m.failovers == []
    assert any("n1 still goose in term 1" in t and "no failover" in t for t in texts(m))
    assert "n1 answers again (goose, term 1)" in texts(m)


def test_stepping_down_is_a_failover_cause() -> None:
    m = healthy()
    m.apply_observation(up("n1", "duck", 2, at=3.0, goose="n2"))
    m.apply_observation(up("n2", "goose", 2, at=3.05))
    assert m.failovers[-1].cause == "n1 stepped down (duck)"
    assert "n1: goose → duck (term 2)" in texts(m)


def test_two_goose_answers_without_proof_are_a_note_not_an_alarm() -> None:
    m = healthy()  # n1's answers carry no lease: nothing proves it is goose after them
    m.apply_observation(up("n3", "goose", 2, at=2.0, lease_remaining_ms=120.0))
    h = header_view(m, 2.0)
    assert h.banner is None and h.geese == () and h.goose == "n3"
    assert "n1's last answer was goose (term 1); n3 answers goose in term 2 (no overlap " \
           "proven)" in texts(m)
    assert not any("TWO GEESE" in t for t in texts(m))


def test_two_geese_with_overlapping_proven_leases_are_an_alarm_once_and_cleared() -> None:
    m = healthy()
    m.apply_observation(up("n1", "goose", 1, sent=2.0, at=2.01, lease_remaining_ms=120.0))
    m.apply_observation(up("n3", "goose", 2, sent=2.05, at=2.06, lease_remaining_ms=120.0))
    h = header_view(m, 2.07)
    assert h.geese == (("n3", 2), ("n1", 1))
    assert h.banner is not None and h.banner.startswith("TWO GEESE")
    m.apply_observation(up("n3", "goose", 2, sent=2.1, at=2.11, lease_remaining_ms=120.0))
    assert sum("TWO GEESE" in t for t in texts(m)) == 1
    m.apply_observation(up("n1", "duck", 2, at=2.3, goose="n3"))
    assert texts(m)[-1] == "only one node answers goose again"
    assert header_view(m, 2.3).banner is None
    # n3 in a higher term took over: that is a failover too.
    assert m.failovers[-1].new == "n3"


def test_membership_events_and_rows_follow_the_registry() -> None:
    m = healthy()
    seq = m.events[-1].seq
    m.apply_membership(membership("n1", "n2", "n3", "n4", version=4), at=2.0, wall=1002.0)
    assert texts(m, seq) == ["n4 joined at http://127.0.0.1:7004 (version 4)"]
    assert [r.name for r in rows_view(m, 2.0)] == ["n1", "n2", "n3", "n4"]
    assert rows_view(m, 2.0)[3].role == "pending"
    m.apply_membership(membership("n1", "n3", "n4", version=5), at=3.0, wall=1003.0)
    assert texts(m)[-1] == "n2 left the registry (version 5)"
    assert [r.name for r in rows_view(m, 3.0)] == ["n1", "n3", "n4"]
    # A late answer from a removed node is ignored.
    assert m.apply_observation(up("n2", "duck", 1, at=3.1)) == []
    assert "n2" not in m.latest


def test_down_node_keeps_its_row_with_last_known_values() -> None:
    m = healthy()
    m.apply_observation(down("n2", at=4.0, error="timeout"))
    row = row_view(m, "n2", 6.0)
    assert row.role == "unreachable"
    assert row.term == 1 and row.stale
    assert row.latency_ms is None and row.uptime_s is None
    assert row.state == "no answer 5.0 s: timeout"
    assert "n2 does not answer: timeout" in texts(m)


def test_killed_node_row_and_quiet_log() -> None:
    m = healthy()
    m.note_process("n2", pid=42, state="killed", at=4.0)
    seq = m.events[-1].seq
    m.apply_observation(down("n2", at=4.1))
    assert texts(m, seq) == []  # the console already logged the kill itself
    row = row_view(m, "n2", 5.0)
    assert (row.role, row.pid, row.pid_owned) == ("killed", 42, True)
    assert row.state == "killed here 1.0 s ago"


def test_role_term_isolation_and_redis_changes_are_events() -> None:
    m = healthy()
    m.apply_observation(up("n2", "candidate", 2, at=2.0))
    m.apply_observation(up("n3", "duck", 2, at=2.1, goose="n1"))
    m.apply_observation(up("n3", "duck", 2, at=2.2, goose="n1", isolated_from=("n1", "n2")))
    m.apply_observation(up("n3", "duck", 2, at=2.3, goose="n1", redis=RedisInfo(connected=False,
                           error="timeout"), isolated_from=("n1", "n2")))
    m.tick(2.7)  # a term change waits a moment for others to fold into it
    t = texts(m)
    assert "n2: duck → candidate (term 2)" in t
    assert "n3: term 1 → 2 (duck, follows n1)" in t
    assert "n3 isolated from n1, n2" in t
    assert "n3 lost Redis: timeout" in t
    row = row_view(m, "n3", 2.3)
    assert "ISOLATED from all peers" in row.state and "no Redis" in row.state


def test_redis_outage_keeps_the_last_members() -> None:
    m = healthy()
    m.apply_registry_error("redis: Connection refused", wall=1005.0)
    m.apply_registry_error("redis: Connection refused", wall=1005.5)
    t = texts(m)
    assert sum("Redis unreachable" in x for x in t) == 1
    h = header_view(m, 5.0)
    assert h.redis_ok is False and h.members == 3
    assert h.banner is not None and "REDIS UNREACHABLE" in h.banner
    m.apply_membership(membership(*NAMES), at=6.0, wall=1006.0)
    assert "Redis reachable again" in texts(m)


def test_status_parsing() -> None:
    st = NodeStatus.from_json({
        "name": "a", "cluster": "c", "address": "http://x:1", "pid": 7, "role": "goose",
        "term": 4, "goose": "a", "voted_for": "a", "members": ["b", "a"], "quorum": 2,
        "membership_version": 3, "heartbeat_age_ms": None, "lease_remaining_ms": 88.5,
        "uptime_s": 12.5, "elections_started": 1, "elections_won": 1, "heartbeats_sent": 9,
        "heartbeats_received": 0, "redis": {"connected": True, "error": None},
        "isolated_from": [], "state": "leader", "timing": {},
    })
    assert (st.role, st.term, st.members, st.lease_remaining_ms) == ("goose", 4, ("a", "b"), 88.5)
    # a node from before timing records: the new timing fields take their defaults
    assert (st.timing.epoch, st.timing.target, st.timing.timings, st.timing.waiting_for) == (
        None, None, (), ())
    for bad in ({"name": "a", "role": "king", "term": 1}, {"name": "a", "role": "duck"},
                {"role": "duck", "term": 1}, [1, 2], {"name": "a", "role": "duck", "term": "1"}):
        with pytest.raises(StatusFormatError):
            NodeStatus.from_json(bad)


def test_timing_in_status_round_trips_and_is_parsed_strictly() -> None:
    timing = TimingInfo(heartbeat_ms=15, election_timeout_ms=(150, 300), lease_ms=30.0,
                        lease_wait_ms=100.0, longest_lease_ms=80.0, epoch=2, target="fast",
                        timings=("default", "fast"), confirmed=True, waiting_for=("n3",),
                        source="cluster")
    st = NodeStatus(name="a", role=Role.DUCK, term=1, timing=timing)
    again = NodeStatus.from_json(st.to_json())
    assert again.timing == timing and again.timing.changing
    data = st.to_json()
    for key, bad in [("waiting_for", "n3"), ("epoch", "2"), ("confirmed", 1),
                     ("timings", [1])]:
        with pytest.raises(StatusFormatError, match=f"timing.{key}"):
            NodeStatus.from_json({**data, "timing": {**data["timing"], key: bad}})


def test_formatting() -> None:
    assert fmt_ms(None) == "—"
    assert fmt_ms(2.345) == "2.3 ms"
    assert fmt_ms(182.4) == "182 ms"
    assert fmt_ms(1520) == "1.5 s"
    assert fmt_uptime(65) == "1m05s"
    assert fmt_uptime(7300) == "2h01m"
    assert sorted(["n10", "n2", "n1"], key=natural_key) == ["n1", "n2", "n10"]
    assert summarize_failovers([]) == "no failover yet"


def test_registry_problem_is_a_banner_and_a_row_note_not_redis_down() -> None:
    m = healthy()
    n = len(m.events_after(0))
    m.apply_registry_error("ddg:c:version is 'abc', not a version number", wall=1002.0,
                           unreachable=False)
    m.apply_registry_error("ddg:c:version is 'abc', not a version number", wall=1003.0,
                           unreachable=False)
    assert texts(m, n) == ["registry problem: ddg:c:version is 'abc', not a version number; "
                           "still polling the 3 last known members"]
    h = header_view(m, 2.0)
    assert h.redis_ok is not False
    assert h.banner is not None and h.banner.startswith("REGISTRY PROBLEM (ddg:c:version")
    m.apply_observation(up("n2", "duck", 1, at=2.0, goose="n1",
                           redis=RedisInfo(problem="bad version")))
    row = row_view(m, "n2", 2.0)
    assert "registry: bad version" in row.state and row.level == "warning"
    m.apply_membership(membership(*NAMES), at=3.0, wall=1004.0)
    assert "registry readable again" in texts(m, n)
    assert header_view(m, 3.0).banner is None


def test_header_says_whether_the_cluster_signs_its_messages() -> None:
    m = healthy()
    assert header_view(m, 1.0).security is None  # nodes that do not say
    for i, n in enumerate(NAMES):
        m.apply_observation(up(n, "goose" if n == "n1" else "duck", 1, at=2.0 + i * 0.01,
                               goose="n1", security="hmac"))
    assert header_view(m, 2.1).security == "hmac"
    m.apply_observation(up("n3", "duck", 1, at=2.2, goose="n1", security="insecure-loopback"))
    assert header_view(m, 2.3).security == "mixed"


def test_a_registry_problem_alone_is_a_warning_and_with_no_goose_an_error() -> None:
    m = healthy()
    m.apply_registry_error("bad version", wall=1002.0, unreachable=False)
    assert header_view(m, 2.0).banner_level == "warning"
    m.apply_registry_error("connection refused", wall=1003.0)
    h = header_view(m, 2.0)
    assert h.banner is not None and "REDIS UNREACHABLE" in h.banner
    assert h.banner_level == "warning"
    for n in NAMES:
        m.apply_observation(down(n, at=3.0 + int(n[1:]) * 0.01))
    h = header_view(m, 3.5)
    assert h.banner is not None and h.banner.startswith("NO GOOSE")
    assert h.banner_level == "error"


# ---- events that say what happened ------------------------------------------------------


def test_a_failovers_term_changes_fold_into_one_event() -> None:
    m = healthy(names=("n1", "n2", "n3", "n4", "n5"))
    seq = m.last_seq
    m.apply_observation(down("n1", at=2.0))
    m.apply_observation(up("n2", "goose", 2, at=2.2))
    m.apply_observation(up("n3", "duck", 2, at=2.25, goose="n2"))
    m.apply_observation(up("n3", "duck", 2, at=2.3, goose="n2"))
    m.apply_observation(up("n5", "candidate", 2, at=2.3))  # a role change: its own event
    assert not any("term 1 → 2" in t for t in texts(m, seq))  # still folding
    assert m.tick(2.4) == []
    m.apply_observation(up("n4", "duck", 2, at=2.45, goose="n2"))
    [fold] = m.tick(2.8)
    assert fold.text == "term 1 → 2: n3, n4 follow n2"
    assert fold.about("n3") and fold.about("n4") and not fold.about("n2")
    assert sum("term 1 → 2" in t for t in texts(m, seq)) == 1
    assert "n5: duck → candidate (term 2)" in texts(m, seq)


def test_a_term_change_seen_before_the_new_goose_is_logged_before_the_failover() -> None:
    """The log is in time order: ducks' term changes polled before the new goose answered
    are not held back past the failover line (they were logged after it, with their earlier
    time); later ones fold on their own."""
    m = healthy(names=("n1", "n2", "n3", "n4", "n5"))
    seq = m.last_seq
    m.apply_observation(down("n1", at=2.0))
    m.apply_observation(up("n3", "duck", 2, at=2.1, goose="n2"))
    m.apply_observation(up("n4", "duck", 2, at=2.15, goose="n2"))
    m.apply_observation(up("n2", "goose", 2, at=2.2))
    m.tick(2.9)
    m.apply_observation(up("n5", "duck", 2, at=3.0, goose="n2"))
    m.tick(3.6)
    events = m.events_after(seq)
    assert [e.wall for e in events] == sorted(e.wall for e in events), \
        [(e.wall, e.text) for e in events]
    text = [e.text for e in events]
    assert text[-3] == "term 1 → 2: n3, n4 follow n2" and "→ n2 goose" in text[-2]
    assert text[-1] == "n5: term 1 → 2 (duck, follows n2)"


def test_a_term_change_of_one_node_keeps_its_wording() -> None:
    m = healthy()
    m.apply_observation(up("n3", "duck", 2, at=2.0, goose="n1"))
    m.apply_observation(up("n2", "duck", 3, at=2.1, goose="n1"))  # another term: n3's goes out
    assert texts(m)[-1] == "n3: term 1 → 2 (duck, follows n1)"
    m.tick(3.0)
    assert texts(m)[-1] == "n2: term 1 → 3 (duck, follows n1)"


def test_a_restarted_node_started_as_duck_not_goose_to_duck() -> None:
    m = healthy(goose="n1")
    m.apply_observation(up("n1", "goose", 1, at=2.0, pid=100, uptime_s=50.0))
    m.apply_observation(down("n1", at=3.0))
    m.apply_observation(up("n2", "goose", 2, at=3.3))
    seq = m.last_seq
    m.apply_observation(up("n1", "duck", 2, at=4.0, goose="n2", pid=200, uptime_s=0.4))
    assert texts(m, seq) == ["n1 started as duck (term 2, follows n2)"]


def test_a_node_started_here_is_starting_not_unreachable() -> None:
    m = healthy()
    m.apply_membership(membership(*NAMES, "n4", version=4), at=5.0, wall=1005.0)
    m.note_process("n4", pid=44, state="running", at=5.0)
    seq = m.last_seq
    m.apply_observation(down("n4", at=5.2))
    row = row_view(m, "n4", 6.0)
    assert row.role == "starting" and row.level == "info"
    assert row.state.startswith("starting: started 1.0 s ago")
    assert not any("does not answer" in t for t in texts(m, seq))
    m.apply_observation(up("n4", "duck", 1, at=6.5, goose="n1", state="joining",
                           joining="waiting for the registry"))
    assert row_view(m, "n4", 6.5).role == "starting"
    assert "joining: waiting for the registry" in row_view(m, "n4", 6.5).state
    assert texts(m, seq) == ["n4 started as duck (term 1, follows n1)"]
    m.apply_observation(up("n4", "duck", 1, at=7.0, goose="n1", state="follower"))
    assert row_view(m, "n4", 7.0).role == "duck"


def test_no_quorum_banner_says_what_it_knows() -> None:
    m = ClusterModel(cluster="c")
    m.apply_membership(membership("n1", "n2"), at=0.0, wall=1000.0)
    m.apply_observation(up("n1", "duck", 3, at=1.0))
    assert header_view(m, 1.0).banner is None \
        or "no quorum" not in (header_view(m, 1.0).banner or "")
    m.apply_observation(down("n2", at=1.1))
    h = header_view(m, 1.5)
    assert h.banner is not None
    assert h.banner.startswith("NO GOOSE") and "no quorum: 1 of 2 members answer, 2 needed" \
        in h.banner
    m3 = healthy()
    m3.apply_observation(down("n2", at=2.0))
    m3.apply_observation(down("n3", at=2.0))
    h3 = header_view(m3, 2.1)
    assert h3.goose == "n1"
    assert h3.banner is not None and h3.banner.startswith(
        "No quorum: 1 of 3 members answer, 2 needed")


def test_an_answer_applied_after_a_later_note_keeps_the_log_in_time_order() -> None:
    """A poll answer received just before the operator's action may be applied just after
    its line: the log stays in time order (the answer's line takes the action's instant)."""
    m = healthy()
    seq = m.last_seq
    m.note(1000 + 2.5, "stopping n2 (SIGTERM, pid 1)", node="n2")
    m.apply_observation(up("n2", "duck", 2, at=2.4, goose="n1"))  # received before the note
    m.tick(10.0)
    walls = [e.wall for e in m.events_after(seq)]
    assert len(walls) >= 2 and walls == sorted(walls), texts(m, seq)


def test_a_wall_clock_set_back_shows_in_the_log_not_frozen() -> None:
    """Time order is kept for lines a moment apart; a wall clock set back a minute (NTP, an
    operator) shows as it is: the next lines are not stamped with the old time."""
    m = healthy()
    m.note(1000 + 100.0, "before the clock was set back")
    line = m.note(1000 + 40.0, "after")
    assert line.wall == 1040.0
