"""State-store conformance: every backend subclasses :class:`StateStoreTests` and passes the same tests.

A backend provides the ``store`` fixture (an empty store); the suite checks what the watchers
rely on: create-if-absent, compare-and-swap against a stale version, exactly one winner among
concurrent writers, missing records, listing, and the ledger's life cycle on top of it.
"""

from __future__ import annotations

import dataclasses
import threading

import pytest

from imaxt_pipeline.service.state import (
    Ledger,
    LocalStateStore,
    RetryPolicy,
    S3StateStore,
    SampleState,
    StaleLease,
    StateConflict,
    StateStore,
    compare_and_swap,
    open_state_store,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def run_together(n: int, target) -> None:
    """Run ``target(i)`` in ``n`` threads released at the same moment."""
    barrier = threading.Barrier(n)

    def go(i: int) -> None:
        barrier.wait()
        target(i)

    threads = [threading.Thread(target=go, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


class StateStoreTests:
    """The contract of a :class:`StateStore`; subclasses provide the ``store`` fixture."""

    @pytest.fixture
    def store(self) -> StateStore:
        raise NotImplementedError("a backend's test class provides an empty store")

    # -- records -----------------------------------------------------------
    def test_missing_record_reads_as_absent(self, store):
        assert store.get("nope") == (None, None)
        assert store.samples() == [] and store.all() == []

    def test_create_if_absent(self, store):
        store.put(SampleState(sample="s", attempts=1), version=None)
        with pytest.raises(StateConflict):
            store.put(SampleState(sample="s", attempts=9), version=None)  # create twice
        state, version = store.get("s")
        assert state == SampleState(sample="s", attempts=1) and version is not None

    def test_compare_and_swap(self, store):
        assert store.get("s") == (None, None)
        store.put(SampleState(sample="s"), version=None)
        with pytest.raises(StateConflict):
            store.put(SampleState(sample="s", attempts=9), version=None)  # create twice
        state, v1 = store.get("s")
        store.put(dataclasses.replace(state, attempts=1), version=v1)
        with pytest.raises(StateConflict):
            store.put(dataclasses.replace(state, attempts=2), version=v1)  # stale version
        assert store.get("s")[0].attempts == 1
        assert store.samples() == ["s"] and [x.sample for x in store.all()] == ["s"]

    def test_version_changes_with_every_write(self, store):
        store.put(SampleState(sample="s"), version=None)
        versions = [store.get("s")[1]]
        for attempts in (1, 2):
            state, version = store.get("s")
            store.put(dataclasses.replace(state, attempts=attempts), version=version)
            versions.append(store.get("s")[1])
        assert len(set(versions)) == 3 and None not in versions

    def test_listing(self, store):
        for name in ("b", "a", "c-1"):
            store.put(SampleState(sample=name, input_checksum=name), version=None)
        assert store.samples() == ["a", "b", "c-1"]
        assert [(s.sample, s.input_checksum) for s in store.all()] == [("a", "a"), ("b", "b"), ("c-1", "c-1")]

    # -- concurrency -------------------------------------------------------
    def test_concurrent_creates_have_one_winner(self, store):
        winners = []

        def create(i: int) -> None:
            try:
                store.put(SampleState(sample="s", attempts=i), version=None)
            except StateConflict:
                return
            winners.append(i)

        run_together(6, create)
        assert len(winners) == 1
        assert store.get("s")[0].attempts == winners[0]

    def test_concurrent_swaps_from_one_version_have_one_winner(self, store):
        store.put(SampleState(sample="s"), version=None)
        state, version = store.get("s")
        winners = []

        def swap(i: int) -> None:
            try:
                store.put(dataclasses.replace(state, lease_owner=f"owner{i}"), version=version)
            except StateConflict:
                return
            winners.append(i)

        run_together(6, swap)
        assert len(winners) == 1
        assert store.get("s")[0].lease_owner == f"owner{winners[0]}"

    def test_concurrent_claims_have_one_winner(self, store):
        ledger = Ledger(store)
        ledger.observe("s", "sum")
        winners = []

        def claim(i: int) -> None:
            if ledger.claim("s", f"owner{i}", ttl=60) is not None:
                winners.append(i)

        run_together(6, claim)
        assert len(winners) == 1
        state, _ = store.get("s")
        assert state.lease_owner == f"owner{winners[0]}" and state.attempts == 1

    def test_concurrent_increments_all_land(self, store):
        """The retry helper turns lost races into re-reads: no increment is lost or applied twice."""
        store.put(SampleState(sample="s"), version=None)
        results = []

        def bump(i: int) -> None:
            results.append(
                compare_and_swap(store, "s", lambda st, now: dataclasses.replace(st, runs=st.runs + 1), attempts=50)[1]
            )

        run_together(4, bump)
        assert results == [True] * 4 and store.get("s")[0].runs == 4

    # -- the ledger on this backend ----------------------------------------
    def test_lease_life_cycle_retry_backoff_and_failure(self, store):
        clock = Clock()
        ledger = Ledger(store, retry=RetryPolicy(max_attempts=3, backoff_s=10), clock=clock)
        assert ledger.observe("s", "c1").status == "pending"
        a = ledger.claim("s", "A", ttl=30)
        assert a.status == "running" and a.lease_owner == "A" and a.attempts == 1
        assert ledger.claim("s", "B", ttl=30) is None  # lease held
        clock.now += 20
        assert ledger.renew("s", "A", ttl=30) and not ledger.renew("s", "B", ttl=30)
        clock.now += 25  # 45 s, renewed to 50 s
        assert ledger.claim("s", "B", ttl=30) is None
        clock.now += 10  # A crashed: lease expired
        b = ledger.claim("s", "B", ttl=30)
        assert b.lease_owner == "B" and b.attempts == 2 and "expired" in b.last_error
        assert ledger.finish("s", "A") is None  # A lost its lease
        failed = ledger.finish("s", "B", error="boom")
        assert failed.status == "pending" and failed.next_attempt_at == clock.now + 20  # 10 * 2**(2-1)
        assert ledger.claim("s", "C", ttl=30) is None  # backing off
        clock.now += 21
        c = ledger.claim("s", "C", ttl=30)
        assert c.attempts == 3
        final = ledger.finish("s", "C", error="boom again")
        assert (final.status, final.last_error) == ("failed", "boom again")
        assert ledger.claim("s", "D", ttl=30) is None
        again = ledger.observe("s", "c2")  # inputs changed
        assert (again.status, again.attempts, again.last_error) == ("pending", 0, None)
        assert ledger.claim("s", "D", ttl=30).attempts == 1
        assert ledger.finish("s", "D").status == "done"
        assert ledger.observe("s", "c2").status == "done"  # same inputs: stays done

    # -- fencing -----------------------------------------------------------
    def test_lease_tokens_fence_out_a_stale_attempt(self, store):
        """A taken-over attempt cannot write, even under the same owner id; tokens only grow."""
        clock = Clock()
        ledger = Ledger(store, retry=RetryPolicy(max_attempts=5), clock=clock)
        ledger.observe("s", "c1")
        first = ledger.claim("s", "A", ttl=10)
        assert first.lease_token == 1
        clock.now += 11  # A's renewals stalled; its lease expired
        second = ledger.claim("s", "A", ttl=10)  # the same watcher (owner id) starts attempt 2
        assert second.lease_token == 2 and second.attempts == 2
        before = store.get("s")
        assert not ledger.renew("s", "A", ttl=10, token=1)
        assert ledger.finish("s", "A", token=1) is None and ledger.finish("s", "A", error="x", token=1) is None
        assert store.get("s") == before  # the stale attempt changed nothing
        state, version = before
        with pytest.raises(StaleLease):  # the store itself refuses the stale token
            store.put(dataclasses.replace(state, status="done"), version=version, fence=1)
        assert store.get("s") == before
        assert ledger.renew("s", "A", ttl=10, token=2)
        assert ledger.finish("s", "A", token=2).status == "done"
        with pytest.raises(StaleLease):  # no lease at all any more
            store.put(dataclasses.replace(state, status="done"), version=store.get("s")[1], fence=2)
        ledger.observe("s", "c2")  # inputs change: a new run gets a new, larger token
        assert ledger.claim("s", "B", ttl=10).lease_token == 3

    def test_permanent_error_fails_at_once(self, store):
        ledger = Ledger(store, retry=RetryPolicy(max_attempts=3))
        ledger.observe("s", "c")
        claimed = ledger.claim("s", "A", ttl=30)
        final = ledger.finish("s", "A", error="ConfigError: bad key", permanent=True, token=claimed.lease_token)
        assert (final.status, final.attempts, final.last_error) == ("failed", 1, "ConfigError: bad key")
        assert ledger.claim("s", "B", ttl=30) is None  # not retried

    def test_crash_on_last_attempt_marks_failed(self, store):
        clock = Clock()
        ledger = Ledger(store, retry=RetryPolicy(max_attempts=1), clock=clock)
        ledger.observe("s", "c")
        assert ledger.claim("s", "A", ttl=5) is not None
        clock.now += 6
        assert ledger.claim("s", "B", ttl=5) is None
        state, _ = store.get("s")
        assert state.status == "failed" and "expired" in state.last_error


class TestLocalStateStore(StateStoreTests):
    """A local folder: CAS under an ``fcntl`` lock, atomic rename."""

    @pytest.fixture
    def store(self, tmp_path) -> StateStore:
        store = open_state_store(str(tmp_path / "state"))
        assert isinstance(store, LocalStateStore)
        return store

    def test_listing_ignores_lock_and_temporary_files(self, store):
        store.put(SampleState(sample="s"), version=None)
        (store.root / ".t.123.tmp").write_bytes(b"{}")
        assert sorted(p.name for p in store.root.iterdir()) == [".s.lock", ".t.123.tmp", "s.json"]
        assert store.samples() == ["s"]


class TestS3StateStore(StateStoreTests):
    """S3 over HTTP (moto server): conditional PUT with ``If-Match`` / ``If-None-Match``."""

    @pytest.fixture
    def store(self, s3_endpoint, s3_bucket) -> StateStore:
        store = open_state_store(f"s3://{s3_bucket}/_imaxt/state", {"endpoint_url": s3_endpoint})
        assert isinstance(store, S3StateStore)
        return store

    def test_needs_an_s3_url(self, tmp_path):
        with pytest.raises(TypeError, match="needs an s3:// URL"):
            S3StateStore(str(tmp_path))

    def test_records_at_the_bucket_root(self, s3_endpoint, s3_bucket):
        store = open_state_store(f"s3://{s3_bucket}", {"endpoint_url": s3_endpoint})
        assert store.samples() == []
        store.put(SampleState(sample="r"), version=None)
        assert store.samples() == ["r"] and store.get("r")[0].sample == "r"
