"""Durable state and leases: compare-and-swap on a local folder and on S3 (moto server)."""

from __future__ import annotations

import dataclasses
import threading

import pytest

from imaxt_pipeline.service.state import (
    Ledger, LocalStateStore, RetryPolicy, S3StateStore, SampleState, StateConflict, open_state_store)

from imaxt_pipeline.testing._s3 import create_bucket


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path):
    if request.param == "local":
        return open_state_store(str(tmp_path / "state"))
    endpoint = request.getfixturevalue("s3_endpoint")
    return open_state_store(f"s3://{create_bucket(endpoint)}/_imaxt/state", {"endpoint_url": endpoint})


def test_open_state_store_picks_backend(tmp_path):
    assert isinstance(open_state_store(str(tmp_path)), LocalStateStore)
    assert isinstance(open_state_store(f"file://{tmp_path}"), LocalStateStore)
    with pytest.raises(ValueError, match="local folder or s3://"):
        open_state_store("memory://x")


def test_compare_and_swap(store):
    assert store.get("s") == (None, None)
    store.put(SampleState(sample="s"), version=None)
    with pytest.raises(StateConflict):
        store.put(SampleState(sample="s", attempts=9), version=None)     # create twice
    state, v1 = store.get("s")
    store.put(dataclasses.replace(state, attempts=1), version=v1)
    with pytest.raises(StateConflict):
        store.put(dataclasses.replace(state, attempts=2), version=v1)    # stale version
    assert store.get("s")[0].attempts == 1
    assert store.samples() == ["s"] and [x.sample for x in store.all()] == ["s"]


def test_concurrent_claims_have_one_winner(store):
    ledger = Ledger(store)
    ledger.observe("s", "sum")
    barrier = threading.Barrier(6)
    winners = []

    def claim(i: int) -> None:
        barrier.wait()
        if ledger.claim("s", f"owner{i}", ttl=60) is not None:
            winners.append(i)

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(winners) == 1
    state, _ = store.get("s")
    assert state.lease_owner == f"owner{winners[0]}" and state.attempts == 1


def test_lease_life_cycle_retry_backoff_and_failure(store):
    clock = Clock()
    ledger = Ledger(store, retry=RetryPolicy(max_attempts=3, backoff_s=10), clock=clock)
    assert ledger.observe("s", "c1").status == "pending"
    a = ledger.claim("s", "A", ttl=30)
    assert a.status == "running" and a.lease_owner == "A" and a.attempts == 1
    assert ledger.claim("s", "B", ttl=30) is None                     # lease held
    clock.now += 20
    assert ledger.renew("s", "A", ttl=30) and not ledger.renew("s", "B", ttl=30)
    clock.now += 25                                                   # 45 s, renewed to 50 s
    assert ledger.claim("s", "B", ttl=30) is None
    clock.now += 10                                                   # A crashed: lease expired
    b = ledger.claim("s", "B", ttl=30)
    assert b.lease_owner == "B" and b.attempts == 2 and "expired" in b.last_error
    assert ledger.finish("s", "A") is None                            # A lost its lease
    failed = ledger.finish("s", "B", error="boom")
    assert failed.status == "pending" and failed.next_attempt_at == clock.now + 20  # 10 * 2**(2-1)
    assert ledger.claim("s", "C", ttl=30) is None                     # backing off
    clock.now += 21
    c = ledger.claim("s", "C", ttl=30)
    assert c.attempts == 3
    final = ledger.finish("s", "C", error="boom again")
    assert (final.status, final.last_error) == ("failed", "boom again")
    assert ledger.claim("s", "D", ttl=30) is None
    again = ledger.observe("s", "c2")                                 # inputs changed
    assert (again.status, again.attempts, again.last_error) == ("pending", 0, None)
    assert ledger.claim("s", "D", ttl=30).attempts == 1
    assert ledger.finish("s", "D").status == "done"
    assert ledger.observe("s", "c2").status == "done"                 # same inputs: stays done


def test_crash_on_last_attempt_marks_failed(store):
    clock = Clock()
    ledger = Ledger(store, retry=RetryPolicy(max_attempts=1), clock=clock)
    ledger.observe("s", "c")
    assert ledger.claim("s", "A", ttl=5) is not None
    clock.now += 6
    assert ledger.claim("s", "B", ttl=5) is None
    state, _ = store.get("s")
    assert state.status == "failed" and "expired" in state.last_error


def test_bad_records_rejected(tmp_path):
    with pytest.raises(ValueError, match="status must be one of"):
        SampleState(sample="s", status="weird")
    with pytest.raises(TypeError, match="needs an s3:// URL"):
        S3StateStore(str(tmp_path))
    assert RetryPolicy(backoff_s=10, backoff_max_s=25).delay(5) == 25
