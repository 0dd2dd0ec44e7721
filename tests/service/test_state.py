"""Durable state, independent of the backend: records, back-off, the compare-and-swap retry policy.

Backend behaviour (local folder, S3) is the conformance suite in ``test_state_store.py``.
"""

from __future__ import annotations

import dataclasses

import pytest

from imaxt_pipeline.errors import ConfigError, InputError
from imaxt_pipeline.service.state import (
    CAS_ATTEMPTS,
    Ledger,
    LocalStateStore,
    PermanentError,
    RetryPolicy,
    SampleState,
    StateConflict,
    compare_and_swap,
    is_permanent,
    is_transient,
    open_state_store,
    s3_error_code,
)


class RacingStore(LocalStateStore):
    """A local store where another writer gets in first for the next ``losses`` conditional writes."""

    def __init__(self, root, losses: int) -> None:
        super().__init__(root)
        self.losses = losses
        self.puts = 0

    def put(self, state: SampleState, *, version: str | None, fence: int | None = None) -> None:
        self.puts += 1
        if self.losses > 0:
            self.losses -= 1
            current, v = self.get(state.sample)
            if current is not None:  # a concurrent writer bumps the record
                super().put(dataclasses.replace(current, updated=current.updated + 1), version=v)
            raise StateConflict(f"{state.sample}: state changed concurrently")
        super().put(state, version=version, fence=fence)


def test_open_state_store_picks_backend(tmp_path):
    assert isinstance(open_state_store(str(tmp_path)), LocalStateStore)
    assert isinstance(open_state_store(f"file://{tmp_path}"), LocalStateStore)
    with pytest.raises(ValueError, match="local folder or s3://"):
        open_state_store("memory://x")


def test_bad_records_rejected():
    with pytest.raises(ValueError, match="status must be one of"):
        SampleState(sample="s", status="weird")
    assert RetryPolicy(backoff_s=10, backoff_max_s=25).delay(5) == 25


def test_compare_and_swap_retries_lost_races_then_gives_up(tmp_path):
    store = RacingStore(tmp_path / "a", losses=0)
    store.put(SampleState(sample="s"), version=None)
    store.losses, store.puts = CAS_ATTEMPTS - 1, 0
    new, written = compare_and_swap(store, "s", lambda st, now: dataclasses.replace(st, attempts=7))
    assert written and new.attempts == 7 and store.get("s")[0].attempts == 7
    assert store.puts == CAS_ATTEMPTS  # lost CAS_ATTEMPTS - 1 races, then won

    store.losses, store.puts = CAS_ATTEMPTS, 0
    latest, written = compare_and_swap(store, "s", lambda st, now: dataclasses.replace(st, attempts=8))
    assert not written and store.puts == CAS_ATTEMPTS  # gave up after CAS_ATTEMPTS writes
    assert latest == store.get("s")[0] and latest.attempts == 7  # the stored record, re-read


def test_compare_and_swap_without_change_writes_nothing(tmp_path):
    store = RacingStore(tmp_path, losses=0)
    seen = []
    assert compare_and_swap(store, "s", lambda st, now: seen.append((st, now)), clock=lambda: 5.0) == (None, False)
    assert seen == [(None, 5.0)] and store.puts == 0 and store.samples() == []


def test_every_transition_survives_lost_races(tmp_path):
    """observe, claim, renew and finish share one retry policy: fewer than CAS_ATTEMPTS losses never matter."""
    store = RacingStore(tmp_path, losses=0)
    ledger = Ledger(store)
    store.losses = CAS_ATTEMPTS - 1  # on create, the racing writer has nothing to bump
    assert ledger.observe("s", "c").status == "pending"
    for step in (
        lambda: ledger.claim("s", "A", ttl=60),
        lambda: ledger.renew("s", "A", ttl=60),
        lambda: ledger.finish("s", "A"),
    ):
        store.losses = CAS_ATTEMPTS - 1
        assert step()
    assert store.get("s")[0].status == "done"
    store.losses = CAS_ATTEMPTS  # a transition that loses every race is refused, not forced
    assert ledger.observe("s", "other inputs").input_checksum == "c"


def _client_error(code: str):
    from botocore.exceptions import ClientError

    return ClientError({"Error": {"Code": code, "Message": "whatever the server says"}}, "GetObject")


def _translated(code: str) -> OSError:
    """What s3fs raises: a builtin error *from* botocore's ClientError."""
    from s3fs.errors import translate_boto_error

    exc = translate_boto_error(_client_error(code))
    assert exc.__cause__ is not None
    return exc


@pytest.mark.parametrize("code", ["SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout"])
def test_transient_s3_codes_are_retried(code):
    for exc in (_client_error(code), _translated(code)):
        assert s3_error_code(exc) == code
        assert is_transient(exc) and not is_permanent(exc)


@pytest.mark.parametrize("code", ["NoSuchBucket", "AccessDenied", "InvalidAccessKeyId"])
def test_permanent_s3_codes_stop(code):
    for exc in (_client_error(code), _translated(code)):
        assert is_permanent(exc) and not is_transient(exc)


def test_errors_classified_by_type_not_text():
    from botocore.exceptions import EndpointConnectionError

    assert is_transient(EndpointConnectionError(endpoint_url="http://minio:9000"))
    assert is_transient(ConnectionResetError()) and is_transient(TimeoutError())
    for exc in (ConfigError("steps.mosaic.levles: extra"), InputError("tiles.csv", "bad row"), PermanentError("x")):
        assert is_permanent(exc) and not is_transient(exc)
    try:  # a wrapped configuration error is still one
        try:
            raise ConfigError("typo")
        except ConfigError as inner:
            raise RuntimeError("run failed") from inner
    except RuntimeError as outer:
        assert is_permanent(outer)
    # Words in a message decide nothing.
    for text in ("SlowDown", "ServiceUnavailable", "ConfigError: typo", "NoSuchBucket"):
        assert not is_transient(RuntimeError(text)) and not is_permanent(RuntimeError(text))
