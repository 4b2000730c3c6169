"""Leader election's pure rules: who may take the Lease when, and what the flags configure."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from roost_operator import main
from roost_operator.leader import Action, ElectionConfig, LeaseRecord, Observation, decide

NOW = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)


def held(by: str, renewed_ago: float = 1.0, duration: int = 15) -> LeaseRecord:
    return LeaseRecord(
        holder=by, duration_seconds=duration, renew_time=NOW - timedelta(seconds=renewed_ago)
    )


def test_no_lease_is_created_and_our_own_is_renewed() -> None:
    assert decide(None, "me", NOW, None, 100.0, 15) is Action.CREATE
    assert decide(held("me"), "me", NOW, None, 100.0, 15) is Action.RENEW


def test_a_released_lease_is_taken_at_once() -> None:
    assert decide(held(""), "me", NOW, None, 100.0, 15) is Action.TAKE


def test_a_live_holder_is_waited_for() -> None:
    record = held("other")
    # First sight of the record: its age by our own clock is zero.
    assert decide(record, "me", NOW, None, 100.0, 15) is Action.WAIT
    # Renewed since (a different record): the clock starts again.
    seen = Observation(held("other", renewed_ago=3.0), at=80.0)
    assert decide(record, "me", NOW, seen, 100.0, 15) is Action.WAIT


def test_a_record_unchanged_for_the_lease_duration_is_taken_whatever_the_clocks_say() -> None:
    # The holder's renewTime reads as fresh (its clock runs ahead), but we have seen the same
    # record for 15 s of our own clock: the holder is gone.
    record = held("other", renewed_ago=-30.0)
    assert decide(record, "me", NOW, Observation(record, at=85.0), 100.0, 15) is Action.TAKE
    assert decide(record, "me", NOW, Observation(record, at=86.0), 100.0, 15) is Action.WAIT


def test_a_long_abandoned_record_is_taken_without_waiting_a_lease_duration() -> None:
    # A restarted follower sees a Lease last renewed a minute ago (its holder died while the API
    # server was unreachable): more than twice the duration, however skewed the clocks.
    assert decide(held("gone", renewed_ago=60.0), "me", NOW, None, 100.0, 15) is Action.TAKE
    assert decide(held("slow", renewed_ago=20.0), "me", NOW, None, 100.0, 15) is Action.WAIT


def test_timings_must_nest() -> None:
    with pytest.raises(ValueError, match="retry period < renew deadline < lease duration"):
        ElectionConfig(namespace="ns", identity="me", renew_deadline=20.0)
    with pytest.raises(ValueError, match="identity"):
        ElectionConfig(namespace="ns")


def test_flags_configure_leader_election() -> None:
    _, _, off = main.parse_all(["--namespace", "a"], env={})
    assert off is None
    _, _, election = main.parse_all(
        ["--namespace", "a", "--leader-elect", "--leader-election-lease-duration", "8",
         "--leader-election-renew-deadline", "5", "--leader-election-retry-period", "1"],
        env={"POD_NAME": "op-1"},
    )  # fmt: skip
    assert election is not None
    # No namespace given and no POD_NAMESPACE: the first watched namespace holds the Lease.
    assert (election.namespace, election.name) == ("a", "roost-operator")
    assert (election.lease_duration, election.renew_deadline, election.retry_period) == (8, 5, 1)
    assert election.identity.startswith("roost-operator@op-1/")


def test_environment_configures_leader_election_as_the_chart_does() -> None:
    env = {"ROOST_OPERATOR_LEADER_ELECT": "true", "POD_NAMESPACE": "roost-system"}
    _, _, election = main.parse_all([], env=env)
    assert election is not None
    assert election.namespace == "roost-system"


def test_bad_timings_are_refused_on_the_command_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main.parse_all(["--leader-elect", "--leader-election-renew-deadline", "30"], env={})
    assert "renew deadline" in capsys.readouterr().err


def test_a_follower_is_live_and_ready_on_both_ports_and_frees_them() -> None:
    """The chart's rolling update (maxUnavailable 0) needs the new replica, a follower, Ready;
    kopf's liveness server and the metrics server bind the same ports once it leads."""
    import socket
    import urllib.error
    import urllib.request

    from roost_devcluster.net import free_port
    from roost_operator.leader import follower_health

    health, metrics = free_port(), free_port()
    with follower_health("127.0.0.1", health, metrics):
        for port, path in ((health, "/healthz"), (metrics, "/readyz")):
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
                assert r.status == 200
        # Scraped like the leader: up, with no operator series.
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics", timeout=5) as r:
            assert r.status == 200
            assert r.read() == b""
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(f"http://127.0.0.1:{metrics}/other", timeout=5)
        assert e.value.code == 404
    for port in (health, metrics):
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", port))
