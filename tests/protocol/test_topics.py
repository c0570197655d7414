"""Topic building and parsing; shared by CPython and MicroPython."""

from protocol import district, topics
from prototest import raises


def test_device_topic_round_trip():
    t = topics.device("site-a", "gas-01", topics.DATA)
    assert t == "lifeline/v1/site-a/gas-01/data"
    assert topics.parse_device(t) == ("site-a", "gas-01", "data")


def test_device_filter():
    assert topics.device_filter("site-a", topics.STATE) == "lifeline/v1/site-a/+/state"


def test_dtopics_round_trip():
    assert district.up("site-a", district.ALARM) == "district/v1/site-a/up/alarm"
    assert district.parse_up("district/v1/site-a/up/telemetry") == ("site-a", "telemetry")
    assert district.down("site-a", district.ALARM_ACK) == "district/v1/site-a/down/alarm-ack"
    assert district.parse_down("district/v1/site-a/down/cmd") == ("site-a", "cmd")


def test_ids_that_would_break_topics_or_acls_are_refused():
    for bad in ("", "a/b", "a+b", "#", "A", "x" * 33, None, "gas 1"):
        raises(topics.TopicError, topics.device, "site", bad, topics.DATA)


def test_parse_refuses_foreign_topics():
    for bad in ("lifeline/v1/s/d", "lifeline/v2/s/d/data", "lifeline/v1/s/d/data/x", "lifeline/v1/s/d/nope",
                "district/v1/s/down/telemetry", "district/v1/s/sideways/cmd"):
        try:
            topics.parse_device(bad)
        except topics.TopicError:
            pass
        else:
            raise AssertionError(bad)
    raises(topics.TopicError, district.parse_down, "district/v1/s/up/cmd")
    raises(topics.TopicError, district.parse_up, "district/v1/s/up/rules")


def test_unknown_kind_is_refused():
    raises(topics.TopicError, district.up, "s", "cmd")
