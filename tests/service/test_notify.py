"""Bucket-notification endpoint: real S3 / MinIO event JSON in, 400 for anything else."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest

from imaxt_pipeline.service.notify import NotificationError, NotificationServer, parse_s3_event

# The example event from the AWS S3 documentation ("Event message structure"), verbatim fields.
AWS_EVENT = {
    "Records": [{
        "eventVersion": "2.1", "eventSource": "aws:s3", "awsRegion": "us-west-2",
        "eventTime": "1970-01-01T00:00:00.000Z", "eventName": "ObjectCreated:Put",
        "userIdentity": {"principalId": "AIDAJDPLRKLG7UEXAMPLE"},
        "requestParameters": {"sourceIPAddress": "127.0.0.1"},
        "responseElements": {"x-amz-request-id": "C3D13FE58DE4C810",
                             "x-amz-id-2": "FMyUVURIY8/IgAtTv8xRjskZQpcIZ9KG4V5Wp6S7S/JRWeUWerMUE5JgHvANOjpD"},
        "s3": {"s3SchemaVersion": "1.0", "configurationId": "testConfigRule",
               "bucket": {"name": "imaxt-raw", "ownerIdentity": {"principalId": "A3NL1KOZZKExample"},
                          "arn": "arn:aws:s3:::imaxt-raw"},
               "object": {"key": "incoming/brain+01/tiles/S000_C0_R0_C0.tif", "size": 1024,
                          "eTag": "d41d8cd98f00b204e9800998ecf8427e", "versionId": "096fKKXTRTtl3on89fVO.nfljtsv6qko",
                          "sequencer": "0055AED6DCD90281E5"}}}]}

# MinIO webhook payload: same Records plus top-level EventName/Key.
MINIO_EVENT = {"EventName": "s3:ObjectCreated:Put", "Key": "imaxt-raw/incoming/s2/_COMPLETE",
               "Records": [{"eventVersion": "2.0", "eventSource": "minio:s3", "awsRegion": "",
                            "eventName": "s3:ObjectCreated:Put",
                            "s3": {"bucket": {"name": "imaxt-raw"},
                                   "object": {"key": "incoming%2Fs2%2F_COMPLETE", "size": 0}}}]}


def test_parse_real_events():
    (ev,) = parse_s3_event(json.dumps(AWS_EVENT).encode())
    assert (ev.event_name, ev.bucket, ev.key) == ("ObjectCreated:Put", "imaxt-raw",
                                                  "incoming/brain 01/tiles/S000_C0_R0_C0.tif")
    (ev,) = parse_s3_event(json.dumps(MINIO_EVENT))
    assert ev.key == "incoming/s2/_COMPLETE"
    assert parse_s3_event(json.dumps({"Service": "Amazon S3", "Event": "s3:TestEvent",
                                      "Bucket": "imaxt-raw"})) == []


@pytest.mark.parametrize("payload, message", [
    (b"not json", "not JSON"),
    (b"\xff\xfe", "not JSON"),
    (b"[1, 2]", "JSON object"),
    (b"{}", "no 'Records'"),
    (b'{"Records": []}', "no 'Records'"),
    (b'{"Records": [{"eventName": "x"}]}', r"Records\[0\] lacks"),
    (b'{"Records": [{"eventName": "x", "s3": {"bucket": {"name": "b"}, "object": {"key": 5}}}]}',
     "non-empty strings"),
])
def test_parse_rejects_malformed(payload, message):
    with pytest.raises(NotificationError, match=message):
        parse_s3_event(payload)


def post(url, body, headers=None):
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_server_accepts_events_and_rejects_garbage_with_400():
    received = []
    with NotificationServer(received.extend, port=0) as server:
        assert post(f"{server.url}/events", json.dumps(AWS_EVENT).encode()) == (202, {"accepted": 1})
        assert received[0].key.endswith("S000_C0_R0_C0.tif")
        code, body = post(f"{server.url}/events", b"{broken")
        assert code == 400 and "not JSON" in body["error"]
        code, body = post(f"{server.url}/events", json.dumps({"Records": [{}]}).encode())
        assert code == 400 and "Records[0]" in body["error"]
        assert post(f"{server.url}/elsewhere", b"{}")[0] == 404
        with urllib.request.urlopen(f"{server.url}/healthz") as resp:
            assert resp.status == 200
    assert len(received) == 1                      # malformed payloads never reach the watcher


def test_server_bearer_token():
    received = []
    with NotificationServer(received.extend, port=0, token="s3cret") as server:
        body = json.dumps(MINIO_EVENT).encode()
        assert post(f"{server.url}/events", body)[0] == 401
        assert post(f"{server.url}/events", body, {"Authorization": "Bearer wrong"})[0] == 401
        assert post(f"{server.url}/events", body, {"Authorization": "Bearer s3cret"})[0] == 202
    assert [e.key for e in received] == ["incoming/s2/_COMPLETE"]


def test_watcher_maps_event_keys_to_samples(tmp_path):
    from imaxt_pipeline.service.launcher import CommandAction
    from imaxt_pipeline.service.state import Ledger, open_state_store
    from imaxt_pipeline.service.watcher import Watcher

    w = Watcher("s3://imaxt-raw/incoming", CommandAction("true"), Ledger(open_state_store(str(tmp_path))),
                storage_options={"anon": True})
    events = parse_s3_event(json.dumps(AWS_EVENT)) + parse_s3_event(json.dumps(MINIO_EVENT))
    events += parse_s3_event(json.dumps({"Records": [
        {"eventName": "x", "s3": {"bucket": {"name": "other"}, "object": {"key": "incoming/s9/a"}}},
        {"eventName": "x", "s3": {"bucket": {"name": "imaxt-raw"}, "object": {"key": "incoming/_imaxt/state/s1.json"}}},
        {"eventName": "x", "s3": {"bucket": {"name": "imaxt-raw"}, "object": {"key": "elsewhere/s8/a"}}}]}))
    w.on_events(events)
    assert w._hints == {"brain 01", "s2"} and w._wake.is_set()
