"""Every MQTT topic of the system. Other modules build and parse topics only through here.

Device side (site broker):  lifeline/v1/{site}/{device}/{kind}   kind: data, state, evt, cmd, ack
District side (uplink):     district/v1/{site}/up/{kind}         kind: telemetry, alarm, state, dq, ack, event
District downlink:          district/v1/{site}/down/{kind}       kind: cmd, rules, alarm-ack
"""

ROOT = "lifeline/v1"
DISTRICT_ROOT = "district/v1"

DATA = "data"
STATE = "state"
EVENT = "evt"
CMD = "cmd"
ACK = "ack"
DEVICE_KINDS = (DATA, STATE, EVENT, CMD, ACK)

TELEMETRY = "telemetry"
ALARM = "alarm"
UP_STATE = "state"
DQ = "dq"
UP_ACK = "ack"
UP_EVENT = "event"
UP_KINDS = (TELEMETRY, ALARM, UP_STATE, DQ, UP_ACK, UP_EVENT)

DOWN_CMD = "cmd"
RULES = "rules"
ALARM_ACK = "alarm-ack"
DOWN_KINDS = (DOWN_CMD, RULES, ALARM_ACK)

MAX_ID = 32
_ID_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789_-"


class TopicError(ValueError):
    pass


def check_id(value, what="id"):
    """Site and device ids: 1-32 of [a-z0-9_-], so they are safe as topic levels and in ACL patterns."""
    if not isinstance(value, str) or not 0 < len(value) <= MAX_ID:
        raise TopicError("%s must be 1-%d characters: %r" % (what, MAX_ID, value))
    for ch in value:
        if ch not in _ID_CHARS:
            raise TopicError("%s %r: character %r not allowed (use a-z 0-9 _ -)" % (what, value, ch))
    return value


def _kind(kind, allowed):
    if kind not in allowed:
        raise TopicError("unknown kind %r (expected one of %s)" % (kind, ", ".join(allowed)))
    return kind


def device(site, dev, kind):
    return "%s/%s/%s/%s" % (ROOT, check_id(site, "site"), check_id(dev, "device"), _kind(kind, DEVICE_KINDS))


def device_filter(site, kind):
    """Subscription filter for one kind from every device of a site."""
    return "%s/%s/+/%s" % (ROOT, check_id(site, "site"), _kind(kind, DEVICE_KINDS))


def parse_device(topic):
    """(site, device, kind) of a device topic, or TopicError."""
    parts = topic.split("/")
    if len(parts) != 5 or parts[0] + "/" + parts[1] != ROOT:
        raise TopicError("not a device topic: %r" % topic)
    return check_id(parts[2], "site"), check_id(parts[3], "device"), _kind(parts[4], DEVICE_KINDS)


def up(site, kind):
    return "%s/%s/up/%s" % (DISTRICT_ROOT, check_id(site, "site"), _kind(kind, UP_KINDS))


def down(site, kind):
    return "%s/%s/down/%s" % (DISTRICT_ROOT, check_id(site, "site"), _kind(kind, DOWN_KINDS))


def _parse_district(topic, direction, kinds):
    parts = topic.split("/")
    if len(parts) != 5 or parts[0] + "/" + parts[1] != DISTRICT_ROOT or parts[3] != direction:
        raise TopicError("not a district %s topic: %r" % (direction, topic))
    return check_id(parts[2], "site"), _kind(parts[4], kinds)


def parse_up(topic):
    return _parse_district(topic, "up", UP_KINDS)


def parse_down(topic):
    return _parse_district(topic, "down", DOWN_KINDS)
