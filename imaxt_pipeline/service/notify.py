"""HTTP endpoint for bucket-notification events (S3, MinIO, Amazon SNS, Amazon EventBridge).

Point the bucket's ``s3:ObjectCreated:*`` notifications at ``http://<watcher>:<port>/events``.
Accepted request bodies:

* **S3 / MinIO event JSON** (``{"Records": [{"eventName": ..., "s3": {...}}]}``): a MinIO webhook
  target (``mc event add ... --event put``), or an SNS subscription with raw message delivery;
  ``s3:TestEvent`` gives no records.
* **Amazon SNS** HTTP(S) subscription envelopes: ``Notification`` (its ``Message`` is the S3 event
  JSON, or an EventBridge event, as a string), ``SubscriptionConfirmation`` (confirmed by fetching
  its ``SubscribeURL`` when that is an ``https://sns.<region>.amazonaws.com/`` URL; refused
  otherwise) and ``UnsubscribeConfirmation`` (acknowledged).
* **Amazon EventBridge** S3 events (``{"source": "aws.s3", "detail-type": "Object Created",
  "detail": {"bucket": {"name": ...}, "object": {"key": ..., "size": ..., "etag": ...}}}``), as an
  API destination delivers them.

Object keys are URL-decoded (S3 form-encodes them: ``red flower.jpg`` arrives as ``red+flower.jpg``).
Anything else is answered ``400`` with a one-line reason and never reaches the watcher.

A valid event wakes the watcher, which then checks the named samples at once instead of waiting for
the next poll. The watcher's polling stays the source of truth: a lost notification only delays a
sample, and a forged one only makes the watcher look earlier (this is also why SNS message
signatures are not verified). ``token`` requires ``Authorization: Bearer <token>`` (EventBridge API
destinations: an API-key connection with header ``Authorization``) or HTTP Basic auth with the
token as password (SNS: subscribe ``https://imaxt:<token>@host/events``).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import logging
import re
import threading
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from ..errors import ImaxtError

log = logging.getLogger(__name__)

MAX_BODY = 1 << 20
#: Where SNS subscription confirmations may send us: the SNS endpoint of a region, over HTTPS.
SNS_HOST = re.compile(r"sns\.[a-z0-9-]+\.amazonaws\.com(\.cn)?")


class NotificationError(ImaxtError, ValueError):
    """A payload that is not a bucket-notification event (the message is one line)."""


@dataclass(frozen=True)
class ObjectEvent:
    """One object named by an event notification.

    ``event_name`` is the S3 ``eventName`` (``ObjectCreated:Put``) or the EventBridge
    ``detail-type`` (``Object Created``); ``size`` and ``etag`` are given when the event has them.
    """

    event_name: str
    bucket: str
    key: str
    size: int | None = None
    etag: str | None = None


@dataclass(frozen=True)
class SubscriptionConfirmation:
    """An SNS ``SubscriptionConfirmation``: fetch ``subscribe_url`` to confirm the subscription."""

    topic_arn: str
    subscribe_url: str
    token: str


@dataclass(frozen=True)
class Notification:
    """A parsed request body: the objects it names, and where it came from.

    ``source`` is ``"s3"`` (S3/MinIO ``Records``), ``"s3-test"``, ``"eventbridge"``,
    ``"sns"`` (an SNS ``Notification``; ``inner`` says what its message was),
    ``"sns-subscribe"`` (then ``subscription`` is set) or ``"sns-unsubscribe"``.
    """

    source: str
    events: list[ObjectEvent] = field(default_factory=list)
    subscription: SubscriptionConfirmation | None = None
    inner: str | None = None


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _string(doc: dict[str, Any], key: str, where: str) -> str:
    value = doc.get(key)
    if not isinstance(value, str) or not value:
        raise NotificationError(f"{where}: {key!r} must be a non-empty string")
    return value


def _size(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _records(records: Any) -> list[ObjectEvent]:
    if not isinstance(records, list) or not records:
        raise NotificationError("body has no 'Records' list")
    events = []
    for i, rec in enumerate(records):
        try:
            name = rec["eventName"]
            bucket = rec["s3"]["bucket"]["name"]
            obj = rec["s3"]["object"]
            key = obj["key"]
        except (KeyError, TypeError):
            raise NotificationError(f"Records[{i}] lacks eventName, s3.bucket.name or s3.object.key") from None
        if not all(isinstance(v, str) and v for v in (name, bucket, key)):
            raise NotificationError(f"Records[{i}]: eventName, bucket and key must be non-empty strings")
        etag = obj.get("eTag") or obj.get("etag")
        events.append(
            ObjectEvent(
                event_name=name,
                bucket=bucket,
                key=urllib.parse.unquote_plus(key),
                size=_size(obj.get("size")),
                etag=etag if isinstance(etag, str) else None,
            )
        )
    return events


def _eventbridge(doc: dict[str, Any]) -> list[ObjectEvent]:
    if doc.get("source") != "aws.s3":
        raise NotificationError(f"EventBridge event from source {doc.get('source')!r}, not 'aws.s3'")
    kind = _string(doc, "detail-type", "EventBridge event")
    detail: Any = doc.get("detail")
    try:
        bucket = detail["bucket"]["name"]
        obj = detail["object"]
        key = obj["key"]
    except (KeyError, TypeError):
        raise NotificationError("EventBridge event lacks detail.bucket.name or detail.object.key") from None
    if not all(isinstance(v, str) and v for v in (bucket, key)):
        raise NotificationError("EventBridge event: detail.bucket.name and detail.object.key must be non-empty strings")
    etag = obj.get("etag")
    return [
        ObjectEvent(
            event_name=kind,
            bucket=bucket,
            key=urllib.parse.unquote_plus(key),
            size=_size(obj.get("size")),
            etag=etag if isinstance(etag, str) else None,
        )
    ]


def _sns(doc: dict[str, Any]) -> Notification:
    kind = doc["Type"]
    if kind == "SubscriptionConfirmation":
        sub = SubscriptionConfirmation(
            topic_arn=_string(doc, "TopicArn", "SNS SubscriptionConfirmation"),
            subscribe_url=_string(doc, "SubscribeURL", "SNS SubscriptionConfirmation"),
            token=_string(doc, "Token", "SNS SubscriptionConfirmation"),
        )
        return Notification("sns-subscribe", subscription=sub)
    if kind == "UnsubscribeConfirmation":
        return Notification("sns-unsubscribe")
    if kind != "Notification":
        raise NotificationError(f"unknown SNS message Type {kind!r}")
    message = _string(doc, "Message", "SNS Notification")
    try:
        inner = _parse_doc(json.loads(message), sns=False)
    except json.JSONDecodeError as exc:
        raise NotificationError(f"SNS Message is not JSON ({exc})") from None
    except NotificationError as exc:
        raise NotificationError(f"SNS Message: {exc}") from None
    return Notification("sns", events=inner.events, inner=inner.source)


def _parse_doc(doc: Any, *, sns: bool = True) -> Notification:
    if not isinstance(doc, dict):
        raise NotificationError(f"body must be a JSON object, got {type(doc).__name__}")
    if sns and isinstance(doc.get("Type"), str) and "TopicArn" in doc:
        return _sns(doc)
    if doc.get("Event") == "s3:TestEvent" and "Records" not in doc:
        return Notification("s3-test")
    if "detail-type" in doc and "Records" not in doc:
        return Notification("eventbridge", events=_eventbridge(doc))
    return Notification("s3", events=_records(doc.get("Records")))


def parse_notification(payload: bytes | str) -> Notification:
    """Parse a bucket-notification request body (any of the shapes in the module docstring).

    Parameters
    ----------
    payload : bytes or str
        The request body.

    Returns
    -------
    Notification
        The objects named (keys URL-decoded) and the kind of message.

    Raises
    ------
    NotificationError
        If the payload is not JSON or not one of the accepted shapes; the message is one line.
    """
    try:
        doc = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise NotificationError(f"body is not JSON ({_one_line(str(exc))})") from None
    try:
        return _parse_doc(doc)
    except NotificationError as exc:
        raise NotificationError(_one_line(str(exc))) from None


def parse_s3_event(payload: bytes | str) -> list[ObjectEvent]:
    """The objects named by a notification body (:func:`parse_notification`), or ``[]``.

    Parameters
    ----------
    payload : bytes or str
        S3/MinIO ``{"Records": [...]}``, an SNS envelope or an EventBridge S3 event. An
        ``s3:TestEvent`` and SNS (un)subscription confirmations give no objects.

    Returns
    -------
    list of ObjectEvent
        Object keys are URL-decoded as S3 encodes them.

    Raises
    ------
    NotificationError
        If the payload is not JSON or lacks the fields above.
    """
    return parse_notification(payload).events


def check_subscribe_url(url: str) -> str:
    """``url`` if it is an SNS ``ConfirmSubscription`` URL, else raise :class:`NotificationError`.

    Only ``https://sns.<region>.amazonaws.com[.cn]/?Action=ConfirmSubscription...`` is fetched, so a
    forged confirmation cannot make the watcher request anything else.
    """
    parts = urllib.parse.urlsplit(url)
    query = urllib.parse.parse_qs(parts.query)
    if (
        parts.scheme != "https"
        or not SNS_HOST.fullmatch(parts.hostname or "")
        or parts.username is not None
        or parts.port not in (None, 443)
        or query.get("Action") != ["ConfirmSubscription"]
    ):
        raise NotificationError(f"SubscribeURL is not an Amazon SNS ConfirmSubscription URL: {_one_line(url)[:200]}")
    return url


def confirm_subscription(sub: SubscriptionConfirmation, *, timeout: float = 10.0) -> None:
    """Confirm an SNS subscription by fetching its (checked) ``SubscribeURL``."""
    url = check_subscribe_url(sub.subscribe_url)
    with urllib.request.urlopen(url, timeout=timeout) as resp:  # URL checked above
        resp.read()


def _authorized(header: str, token: str) -> bool:
    scheme, _, value = header.partition(" ")
    if scheme == "Bearer":
        return hmac.compare_digest(value.encode(), token.encode())
    if scheme == "Basic":
        try:
            _, _, password = base64.b64decode(value, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        return hmac.compare_digest(password.encode(), token.encode())
    return False


def _handler_class(
    on_events: Callable[[list[ObjectEvent]], None],
    token: str | None,
    confirm: Callable[[SubscriptionConfirmation], None] | None,
) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "imaxt-notify/1"

        def _reply(self, code: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            if self.path in ("/healthz", "/readyz"):
                self._reply(200, {"status": "ok"})
            else:
                self._reply(404, {"error": "not found"})

        def _subscribe(self, sub: SubscriptionConfirmation) -> None:
            if confirm is None:
                log.warning("SNS subscription to %s not confirmed; visit %s", sub.topic_arn, sub.subscribe_url)
                self._reply(202, {"subscription": "pending", "topic": sub.topic_arn})
                return
            try:
                confirm(sub)
            except NotificationError as exc:
                self._reply(400, {"error": str(exc)})
                return
            except OSError as exc:
                log.warning("SNS subscription to %s: confirmation failed: %s", sub.topic_arn, exc)
                self._reply(502, {"error": _one_line(f"confirming the subscription failed: {exc}")})
                return
            log.info("SNS subscription to %s confirmed", sub.topic_arn)
            self._reply(200, {"subscription": "confirmed", "topic": sub.topic_arn})

        def do_POST(self) -> None:
            if self.path.rstrip("/") not in ("", "/events"):
                self._reply(404, {"error": "not found"})
                return
            if token is not None and not _authorized(self.headers.get("Authorization", ""), token):
                self._reply(401, {"error": "missing or wrong bearer token"})
                return
            try:
                length = int(self.headers.get("Content-Length", ""))
            except ValueError:
                self._reply(411, {"error": "Content-Length required"})
                return
            if length > MAX_BODY:
                self._reply(413, {"error": f"body larger than {MAX_BODY} bytes"})
                return
            try:
                note = parse_notification(self.rfile.read(length))
            except NotificationError as exc:
                self._reply(400, {"error": str(exc)})
                return
            if note.subscription is not None:
                self._subscribe(note.subscription)
                return
            if note.events:
                on_events(note.events)
            self._reply(202, {"accepted": len(note.events)})

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("notify %s " + format, self.client_address[0], *args)

    return Handler


class NotificationServer:
    """A threaded HTTP server that passes parsed events to ``on_events``.

    Parameters
    ----------
    on_events : callable
        Called with the list of :class:`ObjectEvent` of every valid, non-empty notification.
    host, port : str, int
        Where to listen (``port=0``: any free port, see :attr:`url`).
    token : str, optional
        Required bearer token (or Basic-auth password), see the module docstring.
    confirm : callable or None
        What to do with an SNS ``SubscriptionConfirmation``: by default
        :func:`confirm_subscription` (fetch the checked ``SubscribeURL``); ``None`` only logs
        the URL for an operator to confirm by hand.

    Examples
    --------
    ::

        server = NotificationServer(lambda events: None, port=0)
        server.start()
        server.url  # 'http://127.0.0.1:43125'
    """

    def __init__(
        self,
        on_events: Callable[[list[ObjectEvent]], None],
        *,
        host: str = "127.0.0.1",
        port: int = 8080,
        token: str | None = None,
        confirm: Callable[[SubscriptionConfirmation], None] | None = confirm_subscription,
    ) -> None:
        self._httpd = ThreadingHTTPServer((host, port), _handler_class(on_events, token, confirm))
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        host = host.decode() if isinstance(host, bytes) else host
        return f"http://{host}:{port}"

    def start(self) -> NotificationServer:
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="imaxt-notify", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> NotificationServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
