"""Bucket-notification endpoint: real S3 / MinIO event JSON in, 400 for anything else."""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request

import pytest

from imaxt_pipeline.service.notify import (
    NotificationError,
    NotificationServer,
    SubscriptionConfirmation,
    check_subscribe_url,
    parse_notification,
    parse_s3_event,
)

# The example event from the AWS S3 documentation ("Event message structure"), verbatim fields.
AWS_EVENT = {
    "Records": [
        {
            "eventVersion": "2.1",
            "eventSource": "aws:s3",
            "awsRegion": "us-west-2",
            "eventTime": "1970-01-01T00:00:00.000Z",
            "eventName": "ObjectCreated:Put",
            "userIdentity": {"principalId": "AIDAJDPLRKLG7UEXAMPLE"},
            "requestParameters": {"sourceIPAddress": "127.0.0.1"},
            "responseElements": {
                "x-amz-request-id": "C3D13FE58DE4C810",
                "x-amz-id-2": "FMyUVURIY8/IgAtTv8xRjskZQpcIZ9KG4V5Wp6S7S/JRWeUWerMUE5JgHvANOjpD",
            },
            "s3": {
                "s3SchemaVersion": "1.0",
                "configurationId": "testConfigRule",
                "bucket": {
                    "name": "imaxt-raw",
                    "ownerIdentity": {"principalId": "A3NL1KOZZKExample"},
                    "arn": "arn:aws:s3:::imaxt-raw",
                },
                "object": {
                    "key": "incoming/brain+01/tiles/S000_C0_R0_C0.tif",
                    "size": 1024,
                    "eTag": "d41d8cd98f00b204e9800998ecf8427e",
                    "versionId": "096fKKXTRTtl3on89fVO.nfljtsv6qko",
                    "sequencer": "0055AED6DCD90281E5",
                },
            },
        }
    ]
}

# MinIO webhook payload: same Records plus top-level EventName/Key.
MINIO_EVENT = {
    "EventName": "s3:ObjectCreated:Put",
    "Key": "imaxt-raw/incoming/s2/_COMPLETE",
    "Records": [
        {
            "eventVersion": "2.0",
            "eventSource": "minio:s3",
            "awsRegion": "",
            "eventName": "s3:ObjectCreated:Put",
            "s3": {"bucket": {"name": "imaxt-raw"}, "object": {"key": "incoming%2Fs2%2F_COMPLETE", "size": 0}},
        }
    ],
}


# Amazon SNS HTTP/S delivery of the S3 event above ("HTTP/HTTPS notification JSON format"): the S3 event is
# the JSON *string* in Message (raw message delivery off, the default).
SNS_NOTIFICATION = {
    "Type": "Notification",
    "MessageId": "22b80b92-fdea-4c2c-8f9d-bdfb0c7bf324",
    "TopicArn": "arn:aws:sns:us-west-2:123456789012:imaxt-raw-events",
    "Subject": "Amazon S3 Notification",
    "Message": json.dumps(AWS_EVENT),
    "Timestamp": "2012-05-02T00:54:06.655Z",
    "SignatureVersion": "1",
    "Signature": "EXAMPLEw6JRN...",
    "SigningCertURL": "https://sns.us-west-2.amazonaws.com/SimpleNotificationService-f3ecfb7224c7233fe7bb5f59f96de52f"
    ".pem",
    "UnsubscribeURL": "https://sns.us-west-2.amazonaws.com/?Action=Unsubscribe"
    "&SubscriptionArn=arn:aws:sns:us-west-2:123456789012:imaxt-raw-events:c9135db0-26c4-47ec-8998-413945fb5a96",
}

# ("HTTP/HTTPS subscription confirmation JSON format")
SNS_SUBSCRIPTION = {
    "Type": "SubscriptionConfirmation",
    "MessageId": "165545c9-2a5c-472c-8df2-7ff2be2b3b1b",
    "Token": "2336412f37fb687f5d51e6e241d09c805a5a57b30d712f794cc5f6a988666d92768dd60a747ba6f3beb71854e285d6ad02428b0"
    "9cef7b9658d4dd6c1a4da6f7f8e2e5c3f3a19b63eb9f0e4c1b7f0d6b4f3b3a8d9c4e0f2a1b5c6d7e8f9a0b1c2d3e4f5a6b7c8d9e0f1a2b3",
    "TopicArn": "arn:aws:sns:us-west-2:123456789012:imaxt-raw-events",
    "Message": "You have chosen to subscribe to the topic arn:aws:sns:us-west-2:123456789012:imaxt-raw-events.\n"
    "To confirm the subscription, visit the SubscribeURL included in this message.",
    "SubscribeURL": "https://sns.us-west-2.amazonaws.com/?Action=ConfirmSubscription"
    "&TopicArn=arn:aws:sns:us-west-2:123456789012:imaxt-raw-events&Token=2336412f37fb687f5d51e6e241d09c805a5a5",
    "Timestamp": "2012-04-26T20:45:04.751Z",
    "SignatureVersion": "1",
    "Signature": "EXAMPLEpH+DcEwjAPg8O9mY8dReBSwksfg2S7WKQcikcNKWLQjwu6A4VbeS0QHVCkhRS7fUQvi2egU3N858fiTDN6bkkOxYDVrY0A"
    "d8L10Hs3zH81mtnPk5uvvolIC1CXGu43obcgFxeL3khZl8IKvO61GWB6jI9b5+gLPoBc1Q=",
    "SigningCertURL": "https://sns.us-west-2.amazonaws.com/SimpleNotificationService-f3ecfb7224c7233fe7bb5f59f96de52f"
    ".pem",
}

SNS_UNSUBSCRIBE = {**SNS_SUBSCRIPTION, "Type": "UnsubscribeConfirmation"}

# Amazon EventBridge, S3 "Object Created" ("EventBridge event message structure"), as an API destination posts it.
EVENTBRIDGE_EVENT = {
    "version": "0",
    "id": "17793124-05d4-b198-2fde-7ededc63b103",
    "detail-type": "Object Created",
    "source": "aws.s3",
    "account": "111122223333",
    "time": "2021-11-12T00:00:00Z",
    "region": "ca-central-1",
    "resources": ["arn:aws:s3:::imaxt-raw"],
    "detail": {
        "version": "0",
        "bucket": {"name": "imaxt-raw"},
        "object": {
            "key": "incoming/lung+03/_COMPLETE",
            "size": 5,
            "etag": "b1946ac92492d2347c6235b4d2611184",
            "version-id": "IYV3p45BT0ac8hjHg1houSdS1a.Mro8e",
            "sequencer": "617f08299329d189",
        },
        "request-id": "N4N7GDK58NMKJ12R",
        "requester": "123456789012",
        "source-ip-address": "1.2.3.4",
        "reason": "PutObject",
    },
}


def test_parse_real_events():
    (ev,) = parse_s3_event(json.dumps(AWS_EVENT).encode())
    assert (ev.event_name, ev.bucket, ev.key) == (
        "ObjectCreated:Put",
        "imaxt-raw",
        "incoming/brain 01/tiles/S000_C0_R0_C0.tif",
    )
    (ev,) = parse_s3_event(json.dumps(MINIO_EVENT))
    assert ev.key == "incoming/s2/_COMPLETE"
    assert parse_s3_event(json.dumps({"Service": "Amazon S3", "Event": "s3:TestEvent", "Bucket": "imaxt-raw"})) == []


@pytest.mark.parametrize(
    "payload, message",
    [
        (b"not json", "not JSON"),
        (b"\xff\xfe", "not JSON"),
        (b"[1, 2]", "JSON object"),
        (b"{}", "no 'Records'"),
        (b'{"Records": []}', "no 'Records'"),
        (b'{"Records": [{"eventName": "x"}]}', r"Records\[0\] lacks"),
        (
            b'{"Records": [{"eventName": "x", "s3": {"bucket": {"name": "b"}, "object": {"key": 5}}}]}',
            "non-empty strings",
        ),
    ],
)
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
    assert len(received) == 1  # malformed payloads never reach the watcher


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

    w = Watcher(
        "s3://imaxt-raw/incoming",
        CommandAction("true"),
        Ledger(open_state_store(str(tmp_path))),
        storage_options={"anon": True},
    )
    events = parse_s3_event(json.dumps(AWS_EVENT)) + parse_s3_event(json.dumps(MINIO_EVENT))
    events += parse_s3_event(
        json.dumps(
            {
                "Records": [
                    {"eventName": "x", "s3": {"bucket": {"name": "other"}, "object": {"key": "incoming/s9/a"}}},
                    {
                        "eventName": "x",
                        "s3": {"bucket": {"name": "imaxt-raw"}, "object": {"key": "incoming/_imaxt/state/s1.json"}},
                    },
                    {"eventName": "x", "s3": {"bucket": {"name": "imaxt-raw"}, "object": {"key": "elsewhere/s8/a"}}},
                ]
            }
        )
    )
    w.on_events(events)
    assert w._hints == {"brain 01", "s2"} and w._wake.is_set()


def test_parse_sns_envelope_and_eventbridge():
    note = parse_notification(json.dumps(SNS_NOTIFICATION))
    assert (note.source, note.inner) == ("sns", "s3")
    (ev,) = note.events
    assert (ev.bucket, ev.key, ev.size, ev.etag) == (
        "imaxt-raw",
        "incoming/brain 01/tiles/S000_C0_R0_C0.tif",
        1024,
        "d41d8cd98f00b204e9800998ecf8427e",
    )
    # S3's test event, and an EventBridge event, through SNS.
    test_event = {**SNS_NOTIFICATION, "Message": json.dumps({"Service": "Amazon S3", "Event": "s3:TestEvent"})}
    assert parse_notification(json.dumps(test_event)).events == []
    via_sns = {**SNS_NOTIFICATION, "Message": json.dumps(EVENTBRIDGE_EVENT)}
    assert parse_notification(json.dumps(via_sns)).inner == "eventbridge"

    note = parse_notification(json.dumps(EVENTBRIDGE_EVENT).encode())
    (ev,) = note.events
    assert note.source == "eventbridge"
    assert (ev.event_name, ev.bucket, ev.key, ev.size, ev.etag) == (
        "Object Created",
        "imaxt-raw",
        "incoming/lung 03/_COMPLETE",
        5,
        "b1946ac92492d2347c6235b4d2611184",
    )

    sub = parse_notification(json.dumps(SNS_SUBSCRIPTION))
    assert sub.source == "sns-subscribe" and sub.events == []
    assert sub.subscription.topic_arn == SNS_SUBSCRIPTION["TopicArn"]
    assert sub.subscription.subscribe_url == SNS_SUBSCRIPTION["SubscribeURL"]
    assert parse_notification(json.dumps(SNS_UNSUBSCRIBE)).source == "sns-unsubscribe"


@pytest.mark.parametrize(
    "doc, message",
    [
        ({**SNS_NOTIFICATION, "Message": "not json"}, "SNS Message is not JSON"),
        ({**SNS_NOTIFICATION, "Message": json.dumps({"Records": []})}, "SNS Message: body has no 'Records'"),
        ({**SNS_NOTIFICATION, "Message": None}, "'Message' must be a non-empty string"),
        ({**SNS_NOTIFICATION, "Type": "Telegram"}, "unknown SNS message Type"),
        ({k: v for k, v in SNS_SUBSCRIPTION.items() if k != "SubscribeURL"}, "'SubscribeURL' must be"),
        ({**EVENTBRIDGE_EVENT, "source": "aws.ec2"}, "not 'aws.s3'"),
        ({**EVENTBRIDGE_EVENT, "detail": {"bucket": {"name": "b"}}}, "lacks detail.bucket.name or detail.object.key"),
        ({**EVENTBRIDGE_EVENT, "detail": {"bucket": {"name": ""}, "object": {"key": "k"}}}, "non-empty strings"),
        ({**EVENTBRIDGE_EVENT, "detail-type": 3}, "'detail-type' must be a non-empty string"),
    ],
)
def test_parse_rejects_malformed_envelopes(doc, message):
    with pytest.raises(NotificationError, match=message) as err:
        parse_notification(json.dumps(doc))
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "url",
    [
        "http://sns.us-west-2.amazonaws.com/?Action=ConfirmSubscription&Token=x",  # not https
        "https://sns.us-west-2.amazonaws.com.evil.example/?Action=ConfirmSubscription",
        "https://evil.example/?Action=ConfirmSubscription",
        "https://user@sns.us-west-2.amazonaws.com/?Action=ConfirmSubscription",
        "https://sns.us-west-2.amazonaws.com:8443/?Action=ConfirmSubscription",
        "https://sns.us-west-2.amazonaws.com/?Action=Unsubscribe",
        "https://169.254.169.254/latest/meta-data/?Action=ConfirmSubscription",
    ],
)
def test_only_sns_confirmation_urls_are_fetched(url):
    with pytest.raises(NotificationError, match="not an Amazon SNS"):
        check_subscribe_url(url)


def test_sns_confirmation_urls_accepted():
    assert check_subscribe_url(SNS_SUBSCRIPTION["SubscribeURL"]) == SNS_SUBSCRIPTION["SubscribeURL"]
    china = "https://sns.cn-north-1.amazonaws.com.cn/?Action=ConfirmSubscription&Token=t"
    assert check_subscribe_url(china) == china


def test_server_takes_sns_and_eventbridge_and_answers_subscriptions():
    received, confirmed = [], []
    with NotificationServer(received.extend, port=0, confirm=confirmed.append) as server:
        url = f"{server.url}/events"
        assert post(url, json.dumps(SNS_NOTIFICATION).encode()) == (202, {"accepted": 1})
        assert post(url, json.dumps(EVENTBRIDGE_EVENT).encode()) == (202, {"accepted": 1})
        assert [e.key for e in received] == ["incoming/brain 01/tiles/S000_C0_R0_C0.tif", "incoming/lung 03/_COMPLETE"]
        code, body = post(url, json.dumps(SNS_SUBSCRIPTION).encode())
        assert (code, body) == (200, {"subscription": "confirmed", "topic": SNS_SUBSCRIPTION["TopicArn"]})
        assert confirmed == [
            SubscriptionConfirmation(
                topic_arn=SNS_SUBSCRIPTION["TopicArn"],
                subscribe_url=SNS_SUBSCRIPTION["SubscribeURL"],
                token=SNS_SUBSCRIPTION["Token"],
            )
        ]
        assert post(url, json.dumps(SNS_UNSUBSCRIBE).encode()) == (202, {"accepted": 0})
        for bad in (
            {**SNS_NOTIFICATION, "Message": "{oops"},
            {**EVENTBRIDGE_EVENT, "source": "aws.ec2"},
            {"detail-type": "Object Created", "source": "aws.s3"},
        ):
            code, body = post(url, json.dumps(bad).encode())
            assert code == 400 and body["error"] and "\n" not in body["error"], body
    assert len(received) == 2 and len(confirmed) == 1


def test_server_refuses_forged_subscribe_urls_with_the_default_confirmer():
    forged = {**SNS_SUBSCRIPTION, "SubscribeURL": "http://169.254.169.254/latest/meta-data/"}
    with NotificationServer(lambda events: None, port=0) as server:
        code, body = post(f"{server.url}/events", json.dumps(forged).encode())
    assert code == 400 and "not an Amazon SNS ConfirmSubscription URL" in body["error"]


def test_server_without_confirmer_leaves_subscription_pending():
    with NotificationServer(lambda events: None, port=0, confirm=None) as server:
        code, body = post(f"{server.url}/events", json.dumps(SNS_SUBSCRIPTION).encode())
    assert (code, body["subscription"]) == (202, "pending")


def test_server_accepts_the_token_as_basic_auth_password():
    received = []
    body = json.dumps(SNS_NOTIFICATION).encode()

    def basic(user, password):
        return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}

    with NotificationServer(received.extend, port=0, token="s3cret") as server:
        url = f"{server.url}/events"
        assert post(url, body, basic("imaxt", "wrong"))[0] == 401
        assert post(url, body, {"Authorization": "Basic !!notbase64"})[0] == 401
        assert post(url, body, basic("imaxt", "s3cret"))[0] == 202
    assert len(received) == 1
