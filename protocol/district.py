"""The gateway's topics on the district broker; nodes never see these.

District side (uplink):     district/v1/{site}/up/{kind}         kind: telemetry, alarm, state, dq, ack, event,
                                                                  gateway (the gateway's birth and will, retained),
                                                                  ota (releases served, nodes' download progress)
District downlink:          district/v1/{site}/down/{kind}       kind: cmd, rules, alarm-ack
"""

from protocol.topics import TopicError, check_id, check_kind

ROOT = "district/v1"

TELEMETRY = "telemetry"
ALARM = "alarm"
UP_STATE = "state"
DQ = "dq"
UP_ACK = "ack"
UP_EVENT = "event"
GATEWAY = "gateway"
UP_OTA = "ota"
UP_KINDS = (TELEMETRY, ALARM, UP_STATE, DQ, UP_ACK, UP_EVENT, GATEWAY, UP_OTA)

# Bytes of an upstream body at most, before its site seal: a district worker's link asks the broker for packets of
# at most 1 MiB (gateway/mqtt_link.py's MAX_PACKET), and Mosquitto drops a larger one for it after the gateway had
# its PUBACK. 4 KiB is left for the seal, the topic and the MQTT header.
MAX_UP_BODY = (1 << 20) - 4096

DOWN_CMD = "cmd"
RULES = "rules"
ALARM_ACK = "alarm-ack"
DOWN_KINDS = (DOWN_CMD, RULES, ALARM_ACK)


def up(site, kind):
    return "%s/%s/up/%s" % (ROOT, check_id(site, "site"), check_kind(kind, UP_KINDS))


def down(site, kind):
    return "%s/%s/down/%s" % (ROOT, check_id(site, "site"), check_kind(kind, DOWN_KINDS))


def _parse_district(topic, direction, kinds):
    parts = topic.split("/")
    if len(parts) != 5 or parts[0] + "/" + parts[1] != ROOT or parts[3] != direction:
        raise TopicError("not a district %s topic: %r" % (direction, topic))
    return check_id(parts[2], "site"), check_kind(parts[4], kinds)


def parse_up(topic):
    return _parse_district(topic, "up", UP_KINDS)


def parse_down(topic):
    return _parse_district(topic, "down", DOWN_KINDS)
