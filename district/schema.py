"""The district's tables, in SQLAlchemy Core so that one schema serves SQLite (the default) and PostgreSQL.

Everything a site sends is kept as it arrived and as the district understood it; every operator action is a
new row, never an update of history (work orders keep their steps, alarms their transitions). Times are Unix
epoch seconds as floats. Sequence numbers are unsigned 64-bit on the wire, one more bit than either engine's
BIGINT holds, so they are stored shifted by 2^63 (`seq_key`): order and uniqueness survive, and the unique
key on (site, dev, seq) is what de-duplicates redelivery and several workers, inside the database itself.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    func,
)

SEQ_SHIFT = 1 << 63

metadata = MetaData()


def seq_key(seq: int) -> int:
    """A wire sequence number (0..2^64-1) as a signed 64-bit column value, order kept."""
    if not 0 <= seq < 1 << 64:
        raise ValueError(f"sequence number {seq} is outside 0..2^64-1")
    return seq - SEQ_SHIFT


def seq_of(key: int) -> int:
    return key + SEQ_SHIFT


Id = String(64)

sites = Table(
    "sites", metadata,
    Column("site", Id, primary_key=True),
    Column("online", Boolean, nullable=False, default=False),
    Column("session", BigInteger),  # the gateway's session number from its last birth or death
    Column("born", Float),  # when the last birth arrived
    Column("died", Float),  # when the last death (the gateway's will) arrived
    Column("last_seen", Float),
)

devices = Table(
    "devices", metadata,
    Column("site", Id, primary_key=True),
    Column("dev", Id, primary_key=True),
    Column("state", String(16), nullable=False, default="unknown"),  # online, stale, dead, offline
    Column("cls", String(16)),
    Column("fw", String(64)),
    Column("prof", String(16)),
    Column("boot", BigInteger),
    Column("batt", Float),
    Column("rssi", Float),
    Column("lat", Float),
    Column("lon", Float),
    Column("last_seen", Float),
    Column("t_state", Float),  # gateway time of the birth or death the state comes from
    # the newest (boot, seq_key) of the device's messages the retention deleted (district/retention.py), in boot
    # then number order, as a reset counter restarts lower at a newer boot: a message at or below it is taken for
    # one the district has, as the deleted row's unique key would have (district/store.py adds both to an older
    # database; a mark without its boot compares by number alone)
    Column("pruned", BigInteger),
    Column("pruned_boot", BigInteger),
)

# One row per device message the district accepted: the unique key that makes delivery exactly-once.
messages = Table(
    "messages", metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("site", Id, nullable=False),
    Column("dev", Id, nullable=False),
    Column("seq_key", BigInteger, nullable=False),
    Column("boot", BigInteger, nullable=False),
    Column("pri", Integer, nullable=False, default=0),
    Column("hist", Boolean, nullable=False, default=False),  # sent from the site's backlog, not live
    Column("verified", Boolean, nullable=False, default=False),  # the device's own MAC checked here
    Column("sealed", LargeBinary),  # the device's sealed bytes as they arrived, when the site forwarded them
    Column("received", Float, nullable=False),
    # its readings' earliest and latest times, written with the row: the desk finds the messages of a span by
    # them, as long as messages are kept (messages_days), readings being folded after raw_days (district/store.py
    # adds both, and the index, to an older database)
    Column("t_first", Float),
    Column("t_last", Float),
    UniqueConstraint("site", "dev", "seq_key", name="messages_once"),
    Index("messages_span", "site", "dev", "t_last"),
)

readings = Table(
    "readings", metadata,
    Column("message", BigInteger, ForeignKey("messages.id"), nullable=False),
    Column("site", Id, nullable=False),
    Column("dev", Id, nullable=False),
    Column("n", String(64), nullable=False),  # metric name without the device's base name
    Column("t", Float, nullable=False),  # reading time, epoch seconds
    Column("u", String(16)),
    Column("v", Float),
    Column("vs", Text),
    Column("vb", Boolean),
    Column("vd", LargeBinary),
    Column("s", Float),
    Index("readings_series", "site", "dev", "n", "t"),
    # a message's readings: the newest ones the desk's sample -> desk times are of, found from the newest messages
    # without reading the whole table (district/store.open_engine adds this index and the next to an older database)
    Index("readings_message", "message"),
    # the oldest readings, which the retention folds (district/retention.py) without reading the recent ones, in
    # (t, message) order so that a pass stops within readings of one time (district/store.py rebuilds one on t)
    Index("readings_time", "t", "message"),
)

# Readings older than the raw retention are folded into one row per (series, bucket).
rollups = Table(
    "rollups", metadata,
    Column("site", Id, primary_key=True),
    Column("dev", Id, primary_key=True),
    Column("n", String(64), primary_key=True),
    Column("t", Float, primary_key=True),  # bucket start
    Column("count", Integer, nullable=False),
    # readings of the bucket that are numbers (booleans as 0 or 1), which min, max and mean are of
    # (district/store.open_engine adds it to an older database)
    Column("numbers", Integer, nullable=False, server_default="0"),
    Column("min", Float),
    Column("max", Float),
    Column("mean", Float),
    Column("u", String(16)),
)

alarms = Table(
    "alarms", metadata,
    Column("id", String(32), primary_key=True),  # the gateway's episode id
    Column("site", Id, nullable=False),
    Column("dev", Id, nullable=False),
    Column("cls", String(16)),
    Column("metric", String(64)),
    Column("kind", String(16), nullable=False),
    Column("level", String(16)),  # current level; null once cleared
    Column("peak", String(16)),  # the highest level the episode reached
    Column("peak_rank", Integer, nullable=False, default=0),  # 1 blue .. 4 red
    Column("state", String(16), nullable=False),  # open, inhibited, cleared
    Column("hist", Boolean, nullable=False, default=False),
    Column("value", Float),
    Column("unit", String(16)),
    Column("point", String(64)),
    Column("lat", Float),
    Column("lon", Float),
    Column("rule", String(64)),
    Column("raised", Float),  # gateway time of the raise
    Column("t_dev", Float),  # device time of the reading that raised it
    Column("received", Float, nullable=False),  # when the district first heard of it
    Column("acked", Float),  # its first acknowledgement, which its alarm -> ack counts to
    # The ack that covers it as it is now: when given, and the step it was given at. An escalation numbered
    # after that step (one the officer never saw) sets acked_last back to null: the desk asks for a fresh ack,
    # as the gateway does (district/store.py apply_alarm; docs/district.md)
    Column("acked_last", Float),
    Column("acked_step", Integer),
    Column("cleared", Float),
    # when its alarm -> ack starts for a backlog's alarm a live resend made live (store.revive_alarm): then, or
    # when the district received it for one the officer acknowledged while it was historical
    Column("revived", Float),
    Column("t_last", Float, nullable=False),  # gateway time of the transition the state comes from
    Column("step", Integer),  # and its number in the alarm's life; null from a gateway before the numbers
    # The step of its raise or latest escalation, as the gateway keeps it: an ack of a step the page showed before
    # it is refused, also once the alarm has come down again (district/workorders.py ack_alarm). Null: unknown
    Column("rose_step", Integer),
    Index("alarms_open", "state", "level"),
    # a day's alarms, whose response times the metrics count again when one changes (district/metrics.py;
    # district/store.open_engine adds it to an older database)
    Index("alarms_received", "received"),
)

alarm_events = Table(
    "alarm_events", metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("alarm", String(32), nullable=False),
    Column("ev", String(16), nullable=False),
    Column("level", String(16)),
    Column("prev", String(16)),
    Column("value", Float),
    Column("t_gw", Float, nullable=False),
    Column("received", Float, nullable=False),
    Column("resend", Integer, nullable=False, default=0),
    Column("hist", Boolean, nullable=False, default=False),
    Column("step", Integer),  # its number in the alarm's life; null from a gateway before the numbers
)
# Resends of one transition, once. A gateway stamps a batch's transitions with one t_gw, so two escalations of
# one alarm in a batch share (alarm, ev, t_gw): their steps tell them apart (district/store.open_engine rebuilds
# an older database's key, which dropped the second, a red, for a resend of the first)
ALARM_EVENTS_ONCE = Index("alarm_events_once", alarm_events.c.alarm, alarm_events.c.ev, alarm_events.c.t_gw,
                          func.coalesce(alarm_events.c.step, -1), unique=True)

# A backlog's alarm made live by its gateway's live resend (district/store.py revive_alarm): no transition (the
# resend is one the district has) and no officer's action, but a change to what the metrics count (an ack given
# while it was historical now counts), which they find in the rows past those they read (district/metrics.py)
alarm_revivals = Table(
    "alarm_revivals", metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("alarm", String(32), nullable=False),
    Column("received", Float, nullable=False),
)

work_orders = Table(
    "work_orders", metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("alarm", String(32), nullable=False, unique=True),
    Column("site", Id, nullable=False),
    Column("state", String(16), nullable=False),  # see district/workorders.py
    Column("team", String(64)),
    Column("opened", Float, nullable=False),
    Column("updated", Float, nullable=False),
    Column("round", Integer, nullable=False, default=1),  # 2 and up after each send-back
)

# The orders not closed, which the retention's pass looks up (and the desk's board), without reading every order
# the district ever made (district/store.open_engine adds it to an older database)
WORK_ORDERS_OPEN = Index("work_orders_open", work_orders.c.state, sqlite_where=work_orders.c.state != "closed",
                         postgresql_where=work_orders.c.state != "closed")

work_order_steps = Table(
    "work_order_steps", metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("order_id", BigInteger, ForeignKey("work_orders.id"), nullable=False),
    Column("step", String(16), nullable=False),
    Column("actor", String(64), nullable=False),
    Column("at", Float, nullable=False),
    Column("team", String(64)),
    Column("note", Text),  # findings, action taken, or the correction, as the step says
    Column("action", Text),
    Index("work_order_steps_order", "order_id"),  # an order's steps (district/store.open_engine adds it too)
)

users = Table(
    "users", metadata,
    Column("name", String(64), primary_key=True),
    Column("role", String(16), nullable=False),  # viewer, operator, supervisor
    Column("pw_hash", Text, nullable=False),
    Column("created", Float, nullable=False),
)

sessions = Table(
    "sessions", metadata,
    Column("token", String(64), primary_key=True),
    Column("user", String(64), ForeignKey("users.name"), nullable=False),
    Column("csrf", String(64), nullable=False),
    Column("created", Float, nullable=False),
    Column("expires", Float, nullable=False),
)

commands = Table(
    "commands", metadata,
    Column("id", BigInteger, primary_key=True),  # the command id sent down (< 2^63)
    Column("site", Id, nullable=False),
    Column("dev", Id),  # null for a rule-set change
    Column("op", String(64), nullable=False),
    Column("args", Text, nullable=False),  # JSON
    Column("actor", String(64), nullable=False),
    Column("sent", Float, nullable=False),
    Column("ok", Boolean),
    Column("result", Text),  # JSON of the ack's res, or the error
    Column("answered", Float),
)

reports = Table(  # data-quality reports, device events, command acks and thinned summaries, as they came
    "reports", metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("site", Id, nullable=False),
    Column("kind", String(16), nullable=False),  # dq, event, ack, thinned
    Column("dev", Id),
    Column("body", Text, nullable=False),  # JSON
    Column("received", Float, nullable=False),
    Column("digest", String(32)),  # of kind and body (store.add_reports): a re-delivery is stored once; NULL before
    Index("reports_once", "site", "digest", unique=True),
)

# OTA (docs/ota.md, "From the district desk"): what each site serves and how far each node's download is,
# as the site reports them; a rollout and each of its nodes, as the desk's driver runs them.
ota_releases = Table(
    "ota_releases", metadata,
    Column("site", Id, primary_key=True),
    Column("v", String(32), primary_key=True),
    Column("profiles", Text, nullable=False),  # JSON list
    Column("n", Integer, nullable=False),  # the manifest's length, for the ota command
    Column("sig", LargeBinary, nullable=False),  # the manifest's Ed25519 signature, for the ota command
    Column("size", Integer, nullable=False),
    Column("offered", Float, nullable=False),
)

ota_progress = Table(
    "ota_progress", metadata,
    Column("site", Id, primary_key=True),
    Column("dev", Id, primary_key=True),
    Column("v", String(32), nullable=False),
    Column("done", Integer, nullable=False),
    Column("total", Integer, nullable=False),
    Column("t", Float, nullable=False),  # gateway time of the chunk request
    Column("received", Float, nullable=False),
)

ota_rollouts = Table(
    "ota_rollouts", metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("site", Id, nullable=False),
    Column("v", String(32), nullable=False),
    Column("actor", String(64), nullable=False),
    Column("created", Float, nullable=False),
    Column("halt_share", Float, nullable=False),
    Column("stage_timeout", Float, nullable=False),
    Column("state", String(16), nullable=False),  # running, halted, done
    Column("stage", Integer, nullable=False, default=0),  # the stage being run
    Column("stage_sent", Float),  # when the current stage's commands went
    Column("reason", Text),  # why it halted
    Column("finished", Float),
    Column("owner", String(64)),  # the desk process driving it, and until when (a lease another may take)
    Column("lease", Float),
)
# One running rollout a site: two desks starting one at once cannot both commit (on PostgreSQL both would
# read "none running" first; SQLite's writers queue). district/store.open_engine adds it to an older database.
ONE_RUNNING_ROLLOUT = Index("ota_rollouts_one_running", ota_rollouts.c.site, unique=True,
                            sqlite_where=ota_rollouts.c.state == "running",
                            postgresql_where=ota_rollouts.c.state == "running")

ota_rollout_nodes = Table(
    "ota_rollout_nodes", metadata,
    Column("rollout", BigInteger, ForeignKey("ota_rollouts.id"), primary_key=True),
    Column("dev", Id, primary_key=True),
    Column("stage", Integer, nullable=False),
    Column("stage_name", String(16), nullable=False),
    Column("cmd", BigInteger),  # the last ota command sent it
    Column("sends", Integer, nullable=False, default=0),
    Column("state", String(16), nullable=False),  # waiting, sent, download, landed, failed
    Column("detail", Text),
)

refusals = Table(  # what the district would not take, kept for inspection
    "refusals", metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("topic", Text, nullable=False),
    Column("reason", String(32), nullable=False),
    Column("detail", Text, nullable=False),
    Column("payload", LargeBinary, nullable=False),
    Column("received", Float, nullable=False),
)

audit = Table(  # every operator action, whatever it touched
    "audit", metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("actor", String(64), nullable=False),
    Column("at", Float, nullable=False),
    Column("what", String(32), nullable=False),
    Column("target", String(64)),
    Column("detail", Text),
)
