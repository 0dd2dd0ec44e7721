"""HTTP endpoint for S3 / MinIO bucket-notification events.

Configure the bucket to send ``s3:ObjectCreated:*`` events to
``http://<watcher>:<port>/events`` (MinIO: ``mc event add ... --event put`` with a
webhook target; AWS: an SNS/EventBridge HTTP target that forwards the event
JSON). A valid event wakes the watcher, which then checks the named samples at
once instead of waiting for the next poll. The watcher's polling stays the
source of truth, so a lost notification only delays a sample.
"""

from __future__ import annotations

import hmac
import json
import logging
import threading
import urllib.parse
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

from ..errors import ImaxtError

log = logging.getLogger(__name__)

MAX_BODY = 1 << 20


class NotificationError(ImaxtError, ValueError):
    """A payload that is not an S3 / MinIO event notification."""


@dataclass(frozen=True)
class ObjectEvent:
    """One record of an event notification."""

    event_name: str
    bucket: str
    key: str


def parse_s3_event(payload: bytes | str) -> list[ObjectEvent]:
    """Parse an S3 (or MinIO) event notification.

    Parameters
    ----------
    payload : bytes or str
        The request body: ``{"Records": [{"eventName": ..., "s3": {"bucket":
        {"name": ...}, "object": {"key": ...}}}, ...]}``. An ``s3:TestEvent``
        (sent by S3 when a notification is configured) gives no records.

    Returns
    -------
    list of ObjectEvent
        Object keys are URL-decoded as S3 encodes them.

    Raises
    ------
    NotificationError
        If the payload is not JSON or lacks the fields above.
    """
    try:
        doc = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise NotificationError(f"body is not JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise NotificationError(f"body must be a JSON object, got {type(doc).__name__}")
    if doc.get("Event") == "s3:TestEvent" and "Records" not in doc:
        return []
    records = doc.get("Records")
    if not isinstance(records, list) or not records:
        raise NotificationError("body has no 'Records' list")
    events = []
    for i, rec in enumerate(records):
        try:
            name = rec["eventName"]
            bucket = rec["s3"]["bucket"]["name"]
            key = rec["s3"]["object"]["key"]
        except (KeyError, TypeError):
            raise NotificationError(f"Records[{i}] lacks eventName, s3.bucket.name or s3.object.key") from None
        if not all(isinstance(v, str) and v for v in (name, bucket, key)):
            raise NotificationError(f"Records[{i}]: eventName, bucket and key must be non-empty strings")
        events.append(ObjectEvent(event_name=name, bucket=bucket, key=urllib.parse.unquote_plus(key)))
    return events


def _handler_class(on_events: Callable[[list[ObjectEvent]], None],
                   token: str | None) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "imaxt-notify/1"

        def _reply(self, code: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:  # noqa: N802 (http.server API)
            if self.path in ("/healthz", "/readyz"):
                self._reply(200, {"status": "ok"})
            else:
                self._reply(404, {"error": "not found"})

        def do_POST(self) -> None:  # noqa: N802
            if self.path.rstrip("/") not in ("", "/events"):
                self._reply(404, {"error": "not found"})
                return
            if token is not None:
                got = self.headers.get("Authorization", "")
                if not hmac.compare_digest(got.encode(), f"Bearer {token}".encode()):
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
                events = parse_s3_event(self.rfile.read(length))
            except NotificationError as exc:
                self._reply(400, {"error": str(exc)})
                return
            on_events(events)
            self._reply(202, {"accepted": len(events)})

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            log.debug("notify %s " + format, self.client_address[0], *args)

    return Handler


class NotificationServer:
    """A threaded HTTP server that passes parsed events to ``on_events``.

    Examples
    --------
    >>> server = NotificationServer(lambda events: None, port=0)  # doctest: +SKIP
    >>> server.start(); server.url                                # doctest: +SKIP
    'http://127.0.0.1:43125'
    """

    def __init__(self, on_events: Callable[[list[ObjectEvent]], None], *, host: str = "127.0.0.1",
                 port: int = 8080, token: str | None = None) -> None:
        self._httpd = ThreadingHTTPServer((host, port), _handler_class(on_events, token))
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> "NotificationServer":
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="imaxt-notify",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> "NotificationServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
