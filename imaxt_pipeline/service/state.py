"""Durable per-sample state with leases, kept next to the data.

Design
------
Each sample has one small JSON record, ``<state root>/<sample>.json`` (by default
``<bucket>/_imaxt/state/``), holding its status (``pending``, ``running``,
``done``, ``failed``), the number of attempts, the last error, the checksum of
the inputs it was run on and, while running, a *lease*: an owner id and an
expiry time. Every change is a compare-and-swap on the whole record:

* on S3 the version is the object's ETag and writes are conditional
  (``If-Match: <etag>``, or ``If-None-Match: *`` to create), so two watchers on
  different hosts can never both move a record from one version to the next;
* on a local folder the version is a content hash and the read-compare-write
  runs under an exclusive ``fcntl`` lock, followed by an atomic rename.

A lost compare-and-swap is retried by :func:`compare_and_swap`, the one retry loop (policy in
its docstring). A watcher *claims* a sample by swapping it to ``running`` with its own lease;
it renews the lease while it works, and a record whose lease has expired
(crashed or killed watcher) can be claimed again. The host clocks of the
watchers must agree to within a small fraction of the lease time (NTP).

Fencing: every claim increments the record's ``lease_token`` (monotonic per sample, never
reset). The attempt started by that claim passes its token with every later write (renew,
finish) and the store refuses the write (:class:`StaleLease`) unless the stored record still
carries that token: a stale attempt, whose lease was taken over, cannot overwrite the record of
the attempt that replaced it, even when both run under the same owner id.

Errors are classified once, here (:func:`is_permanent`, :func:`is_transient`): configuration
and input errors are permanent (a sample fails at once, not retried); S3 errors are classified
by their error code (``SlowDown``, ``ServiceUnavailable``... are transient), never by message text.
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError, ImaxtError, InputError
from ..io.storage import protocols, url_to_fs

STATUSES = ("pending", "running", "done", "failed")


class StateConflict(ImaxtError):
    """A compare-and-swap lost against a concurrent writer."""


class StaleLease(ImaxtError):
    """A write fenced by a lease token that is no longer the record's (the lease was taken over)."""


class PermanentError(ImaxtError):
    """A failure that retrying cannot fix (configuration or input): the sample fails at once."""


TRANSIENT_CODES = frozenset(
    {
        "SlowDown",
        "ServiceUnavailable",
        "InternalError",
        "RequestTimeout",
        "RequestTimeoutException",
        "Throttling",
        "ThrottlingException",
        "RequestLimitExceeded",
        "TooManyRequests",
        "TooManyRequestsException",
        "OperationAborted",
        "ConditionalRequestConflict",
        "500",
        "502",
        "503",
        "504",
    }
)
"""S3 error codes (``ClientError.response["Error"]["Code"]``) worth retrying after a back-off."""

PERMANENT_CODES = frozenset(
    {
        "NoSuchBucket",
        "InvalidBucketName",
        "AccessDenied",
        "AllAccessDisabled",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "InvalidToken",
        "AccountProblem",
    }
)
"""S3 error codes that only a configuration change fixes (bucket name, credentials)."""


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and its causes/contexts (s3fs raises ``OSError`` *from* botocore's ``ClientError``)."""
    seen: set[int] = set()
    node: BaseException | None = exc
    while node is not None and id(node) not in seen:
        seen.add(id(node))
        yield node
        node = node.__cause__ or node.__context__


def s3_error_code(exc: BaseException) -> str | None:
    """The S3 error code of a botocore ``ClientError`` in ``exc``'s chain, or ``None``."""
    for err in _chain(exc):
        response = getattr(err, "response", None)
        if isinstance(response, dict):
            code = (response.get("Error") or {}).get("Code")
            if code:
                return str(code)
    return None


def _connection_error_types() -> tuple[type[BaseException], ...]:
    types: list[type[BaseException]] = [ConnectionError, TimeoutError]
    with contextlib.suppress(ImportError):
        from botocore.exceptions import ConnectionClosedError, HTTPClientError, ReadTimeoutError
        from botocore.exceptions import ConnectionError as BotoConnectionError

        types += [BotoConnectionError, HTTPClientError, ConnectionClosedError, ReadTimeoutError]
    with contextlib.suppress(ImportError):
        from aiohttp import ClientConnectionError, ServerTimeoutError

        types += [ClientConnectionError, ServerTimeoutError]
    return tuple(types)


def _permanent_types() -> tuple[type[BaseException], ...]:
    types: list[type[BaseException]] = [PermanentError, ConfigError, InputError]
    with contextlib.suppress(ImportError):
        from pydantic import ValidationError

        types.append(ValidationError)
    return tuple(types)


def is_permanent(exc: BaseException) -> bool:
    """Whether retrying cannot help: a configuration or input error, or a permanent S3 error code.

    Classified by exception type and S3 error code, never by message text.
    """
    code = s3_error_code(exc)
    if code is not None:
        return code in PERMANENT_CODES
    return any(isinstance(err, _permanent_types()) for err in _chain(exc))


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` is a storage or network hiccup (transient S3 code, connection error, time-out)."""
    code = s3_error_code(exc)
    if code is not None:
        return code in TRANSIENT_CODES
    return any(isinstance(err, _connection_error_types()) for err in _chain(exc))


@dataclass(frozen=True)
class SampleState:
    """The durable record of one sample."""

    sample: str
    status: str = "pending"
    attempts: int = 0
    last_error: str | None = None
    input_checksum: str | None = None
    lease_owner: str | None = None
    lease_expires: float = 0.0
    next_attempt_at: float = 0.0
    updated: float = 0.0
    runs: int = 0
    lease_token: int = 0

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {self.status!r}")

    def to_json(self) -> bytes:
        return json.dumps(dataclasses.asdict(self), sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> SampleState:
        raw = json.loads(data)
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in names})


class StateStore(abc.ABC):
    """Versioned key-value store of :class:`SampleState` records."""

    @abc.abstractmethod
    def get(self, sample: str) -> tuple[SampleState | None, str | None]:
        """Return the record and its version (both ``None`` when absent)."""

    @abc.abstractmethod
    def put(self, state: SampleState, *, version: str | None, fence: int | None = None) -> None:
        """Write ``state`` if the stored version is still ``version`` (``None``: absent).

        With ``fence``, the write is also refused unless the stored record is ``running`` under
        lease token ``fence`` (the write of an attempt whose lease was taken over).

        Raises
        ------
        StateConflict
            If another writer changed the record first.
        StaleLease
            If ``fence`` is not the stored record's lease token.
        """

    @abc.abstractmethod
    def samples(self) -> list[str]:
        """Names of all samples with a record."""

    @staticmethod
    def _check_fence(current: SampleState | None, state: SampleState, fence: int | None) -> None:
        if fence is None:
            return
        if current is None or current.status != "running" or current.lease_token != fence:
            held = None if current is None else current.lease_token
            raise StaleLease(f"{state.sample}: lease token {fence} is stale (record holds {held})")

    def all(self) -> list[SampleState]:
        out = []
        for name in self.samples():
            state, _ = self.get(name)
            if state is not None:
                out.append(state)
        return out


class LocalStateStore(StateStore):
    """Records in a local folder; CAS under an exclusive ``fcntl`` lock."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, sample: str) -> Path:
        return self.root / f"{sample}.json"

    @contextlib.contextmanager
    def _locked(self, sample: str) -> Iterator[None]:
        fd = os.open(self.root / f".{sample}.lock", os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def _read(self, sample: str) -> tuple[SampleState | None, str | None]:
        try:
            data = self._path(sample).read_bytes()
        except FileNotFoundError:
            return None, None
        return SampleState.from_json(data), hashlib.sha256(data).hexdigest()

    def get(self, sample: str) -> tuple[SampleState | None, str | None]:
        with self._locked(sample):
            return self._read(sample)

    def put(self, state: SampleState, *, version: str | None, fence: int | None = None) -> None:
        with self._locked(state.sample):
            record, current = self._read(state.sample)
            self._check_fence(record, state, fence)
            if current != version:
                raise StateConflict(f"{state.sample}: state changed concurrently")
            tmp = self.root / f".{state.sample}.{os.getpid()}.tmp"
            with open(tmp, "wb") as fh:
                fh.write(state.to_json())
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self._path(state.sample))

    def samples(self) -> list[str]:
        return sorted(p.stem for p in self.root.glob("*.json"))


class S3StateStore(StateStore):
    """Records as S3 objects; CAS with conditional PUT (``If-Match`` / ``If-None-Match``)."""

    def __init__(self, url: str, storage_options: dict[str, Any] | None = None) -> None:
        fs, path = url_to_fs(url, storage_options)
        if "s3" not in protocols(fs):
            raise TypeError(f"S3StateStore needs an s3:// URL, got {url!r}")
        self.fs = fs
        self.bucket, _, prefix = path.partition("/")
        self.prefix = prefix.strip("/")

    def _key(self, sample: str) -> str:
        return f"{self.prefix}/{sample}.json" if self.prefix else f"{sample}.json"

    def get(self, sample: str) -> tuple[SampleState | None, str | None]:
        from fsspec.asyn import sync

        async def _get() -> tuple[bytes, str]:
            resp = await self.fs._call_s3("get_object", Bucket=self.bucket, Key=self._key(sample))
            body = resp["Body"]
            try:
                data = await body.read()
            finally:
                body.close()
            return data, resp["ETag"]

        try:
            data, etag = sync(self.fs.loop, _get)
        except FileNotFoundError:
            return None, None
        return SampleState.from_json(data), etag

    def put(self, state: SampleState, *, version: str | None, fence: int | None = None) -> None:
        if fence is not None:
            # The conditional PUT below replaces exactly the version read here, so the token
            # checked is the token replaced: a compare-and-swap on the token.
            record, current = self.get(state.sample)
            self._check_fence(record, state, fence)
            if current != version:
                raise StateConflict(f"{state.sample}: state changed concurrently")
        cond = {"IfNoneMatch": "*"} if version is None else {"IfMatch": version}
        try:
            self.fs.call_s3(
                "put_object",
                Bucket=self.bucket,
                Key=self._key(state.sample),
                Body=state.to_json(),
                ContentType="application/json",
                **cond,
            )
        except OSError as exc:
            # Lost the race: the precondition failed, or the record vanished under If-Match.
            if s3_error_code(exc) in CONFLICT_CODES or isinstance(exc, (FileExistsError, FileNotFoundError)):
                raise StateConflict(f"{state.sample}: state changed concurrently") from None
            raise

    def samples(self) -> list[str]:
        root = f"{self.bucket}/{self.prefix}" if self.prefix else self.bucket
        self.fs.invalidate_cache(root)
        try:
            names = self.fs.ls(root, detail=False, refresh=True)
        except FileNotFoundError:
            return []
        return sorted(n.rsplit("/", 1)[-1][:-5] for n in names if n.endswith(".json"))


CONFLICT_CODES = frozenset({"PreconditionFailed", "ConditionalRequestConflict", "NoSuchKey"})
"""S3 error codes of a lost conditional write."""


def open_state_store(url: str, storage_options: dict[str, Any] | None = None) -> StateStore:
    """A :class:`StateStore` for a local folder or an ``s3://`` prefix.

    Raises
    ------
    ValueError
        For other protocols, which offer no atomic conditional write.
    """
    if url.startswith(("s3://", "s3a://")):
        return S3StateStore(url, storage_options)
    if "://" not in url or url.startswith("file://"):
        return LocalStateStore(url.removeprefix("file://"))
    raise ValueError(f"state store URL must be a local folder or s3://, got {url!r}")


CAS_ATTEMPTS = 5
"""Compare-and-swap attempts per transition (see :func:`compare_and_swap`)."""

Update = Callable[[SampleState | None, float], SampleState | None]


def compare_and_swap(
    store: StateStore,
    sample: str,
    update: Update,
    *,
    clock: Callable[[], float] = time.time,
    attempts: int = CAS_ATTEMPTS,
    fence: int | None = None,
) -> tuple[SampleState | None, bool]:
    """Read the record, compute its successor, write it if nobody else wrote first; retry on a lost race.

    The retry policy of every state transition: a :class:`StateConflict` means another writer
    has already stored a newer version, so the record is read again and ``update`` decides
    afresh, at once (no sleep: there is nothing to wait for), at most ``attempts`` times in all.
    Each attempt is one read and one conditional write, so a transition cannot be lost or
    applied twice, only refused.

    Parameters
    ----------
    store : StateStore
    sample : str
    update : callable
        ``update(record, now) -> new record`` (``record`` is ``None`` when absent), or ``None``
        to leave the record as it is.
    clock : callable, optional
        Source of ``now``, read once per attempt.
    attempts : int, optional
        Conditional writes tried before giving up.
    fence : int, optional
        Lease token the stored record must still carry (see :meth:`StateStore.put`); a write
        refused for a stale token is not retried.

    Returns
    -------
    record : SampleState or None
        The record written, or else the stored one (read again after the last lost race).
    written : bool
        Whether ``update``'s record was stored.
    """
    for _ in range(attempts):
        state, version = store.get(sample)
        new = update(state, clock())
        if new is None:
            return state, False
        try:
            if fence is None:
                store.put(new, version=version)
            else:
                store.put(new, version=version, fence=fence)
        except StateConflict:
            continue
        except StaleLease:  # the lease was taken over: refused, not retried
            return state, False
        return new, True
    return store.get(sample)[0], False


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how soon a failed sample is tried again."""

    max_attempts: int = 3
    backoff_s: float = 60.0
    backoff_max_s: float = 3600.0

    def delay(self, attempts: int) -> float:
        """Exponential back-off after ``attempts`` failed attempts (1, 2, 4, ... x ``backoff_s``)."""
        return float(min(self.backoff_max_s, self.backoff_s * 2 ** max(0, attempts - 1)))


class Ledger:
    """Sample life cycle on top of a :class:`StateStore`: observe, claim, renew, finish.

    Every transition goes through :func:`compare_and_swap`; a transition that is refused (not
    due, not the owner, or lost to a concurrent writer) returns ``None`` or ``False`` instead of
    raising, so callers simply move on to the next sample.
    """

    def __init__(
        self, store: StateStore, *, retry: RetryPolicy | None = None, clock: Callable[[], float] = time.time
    ) -> None:
        self.store = store
        self.retry = retry or RetryPolicy()
        self.clock = clock

    def _swap(self, sample: str, update: Update, *, fence: int | None = None) -> tuple[SampleState | None, bool]:
        return compare_and_swap(self.store, sample, update, clock=self.clock, fence=fence)

    @staticmethod
    def holds(state: SampleState | None, owner: str, token: int | None) -> bool:
        """Whether ``state`` is ``running`` under ``owner``'s lease (and, if given, lease ``token``)."""
        return (
            state is not None
            and state.status == "running"
            and state.lease_owner == owner
            and (token is None or state.lease_token == token)
        )

    def observe(self, sample: str, checksum: str) -> SampleState:
        """Record that ``sample`` has landed with inputs ``checksum``.

        A new sample becomes ``pending``; a finished sample (done or failed)
        whose inputs changed is reset to ``pending`` with zero attempts.
        """

        def update(state: SampleState | None, now: float) -> SampleState | None:
            if state is None:
                return SampleState(sample=sample, input_checksum=checksum, updated=now)
            if state.status in ("done", "failed") and state.input_checksum != checksum:
                return dataclasses.replace(
                    state,
                    status="pending",
                    attempts=0,
                    last_error=None,
                    input_checksum=checksum,
                    next_attempt_at=0.0,
                    updated=now,
                )
            if state.status == "pending" and state.input_checksum != checksum:
                return dataclasses.replace(state, input_checksum=checksum, updated=now)
            return None

        state, _ = self._swap(sample, update)
        assert state is not None  # written by us or by the writer that beat us
        return state

    def claimable(self, state: SampleState, now: float | None = None) -> bool:
        now = self.clock() if now is None else now
        if state.status == "pending":
            return now >= state.next_attempt_at
        return state.status == "running" and state.lease_expires <= now

    def claim(self, sample: str, owner: str, *, ttl: float) -> SampleState | None:
        """Take the lease on ``sample`` if it is due; return the claimed record or ``None``.

        A ``running`` record whose lease expired counts as a failed attempt of
        its crashed owner; when that exhausts the attempts the sample is marked
        ``failed`` instead of claimed. Every claim takes the next ``lease_token``: the
        fencing token that the attempt passes to :meth:`renew` and :meth:`finish`.
        """

        def update(state: SampleState | None, now: float) -> SampleState | None:
            if state is None or not self.claimable(state, now):
                return None
            if state.status == "running" and state.attempts >= self.retry.max_attempts:
                return dataclasses.replace(
                    state,
                    status="failed",
                    lease_owner=None,
                    lease_expires=0.0,
                    updated=now,
                    last_error=state.last_error or f"lease of {state.lease_owner} expired (run lost)",
                )
            error = state.last_error
            if state.status == "running":
                error = f"lease of {state.lease_owner} expired (run lost)"
            return dataclasses.replace(
                state,
                status="running",
                attempts=state.attempts + 1,
                lease_owner=owner,
                lease_expires=now + ttl,
                lease_token=state.lease_token + 1,
                updated=now,
                last_error=error,
            )

        new, written = self._swap(sample, update)
        if not written or new is None or new.status != "running":
            return None
        # Read back: guards against stores whose conditional write is not atomic.
        check, _ = self.store.get(sample)
        return new if self.holds(check, owner, new.lease_token) else None

    def renew(self, sample: str, owner: str, *, ttl: float, token: int | None = None) -> bool:
        """Extend the lease; ``False`` if ``owner`` (under lease ``token``, if given) no longer holds it."""

        def update(state: SampleState | None, now: float) -> SampleState | None:
            if not self.holds(state, owner, token):
                return None
            assert state is not None
            return dataclasses.replace(state, lease_expires=now + ttl, updated=now)

        return self._swap(sample, update, fence=token)[1]

    def finish(
        self,
        sample: str,
        owner: str,
        *,
        error: str | None = None,
        permanent: bool = False,
        token: int | None = None,
    ) -> SampleState | None:
        """Record the outcome of ``owner``'s run: done, pending again (back-off) or failed.

        A ``permanent`` error (configuration, input) fails the sample at once. With ``token``
        the write is fenced: refused (``None``) if the lease was taken over since.
        """

        def update(state: SampleState | None, now: float) -> SampleState | None:
            if not self.holds(state, owner, token):
                return None
            assert state is not None
            common: dict[str, Any] = dict(lease_owner=None, lease_expires=0.0, updated=now)
            if error is None:
                return dataclasses.replace(state, status="done", last_error=None, runs=state.runs + 1, **common)
            if permanent or state.attempts >= self.retry.max_attempts:
                return dataclasses.replace(state, status="failed", last_error=error, **common)
            return dataclasses.replace(
                state,
                status="pending",
                last_error=error,
                next_attempt_at=now + self.retry.delay(state.attempts),
                **common,
            )

        new, written = self._swap(sample, update, fence=token)
        return new if written else None
