"""gateway.store.to_json, which writes every device's state at each ingest commit: through orjson, through the
standard library for what orjson refuses, and read back by json.loads either way."""

from __future__ import annotations

import json
import math
import sqlite3
from typing import Any

import pytest

from gateway import store
from gateway.device_list import DeviceConfig, DeviceList
from gateway.registry import Health, Registry
from gateway.sequence import SequenceTracker

DOCS: list[Any] = [
    {"dev": "gas-1", "online": True, "boot": 3, "boot_epoch": None, "fw": "1.2.3", "rssi": -67.5, "ip": "",
     "messages": 12345, "last_seen": 1764900000.123456},
    [2 ** 64 - 1 - 65536, 2 ** 64 - 65536, 2 ** 64 - 1, [[5, 9, 1764900000.5, False]], [3, 100, True], 3, 0, 0, 0, 3],
    [[5, 120], [122, 130]],
    {"runs": {"1": [1764900000.0, 1764900010.25, 3]}, "latest": 1764900010.25, "window": [[1.0, 2.5]]},
    {"fw": "é ✓ \u0000 \"quoted\""},
]


@pytest.mark.parametrize("doc", DOCS)
def test_state_reads_back_as_written(doc: Any) -> None:
    text = store.to_json(doc)
    assert json.loads(text) == json.loads(json.dumps(doc))
    assert ", " not in text and '": ' not in text.replace('"\\"quoted\\"', "")  # compact


def test_what_orjson_refuses_goes_through_json() -> None:
    big = [2 ** 64, -(2 ** 63) - 1, "lone \ud800 surrogate"]
    assert json.loads(store.to_json(big)) == big


@pytest.mark.parametrize("doc", [*DOCS, [2 ** 64, -(2 ** 63) - 1, 10 ** 30, 2 ** 64 - 1, 1e300]])
def test_from_json_reads_state_back_exactly(doc: Any) -> None:
    got = store.from_json(store.to_json(doc))
    assert got == json.loads(json.dumps(doc))
    assert json.dumps(got) == json.dumps(json.loads(json.dumps(doc)))  # an int stays an int


def test_a_float_that_is_not_finite_is_read_back_as_unknown() -> None:
    back = json.loads(store.to_json({"batt": math.nan, "rssi": math.inf}))
    assert back == {"batt": None, "rssi": None}


def test_health_and_sequence_rows_load_back() -> None:
    conn = sqlite3.connect(":memory:")
    reg = Registry(conn, DeviceList())
    reg.birth("gas-1", {"boot": 2, "fw": "1.0", "prof": "gas", "rst": "power", "rssi": -70, "batt": 88.5,
                        "ip": "10.0.0.7", "sleep": 60, "clk": 1, "t": 12.5}, 1764900000.0, live=True)
    reg.seen("gas-1", 1764900001.0)
    reg.flush()
    seq = SequenceTracker(conn, 1000, 10.0)
    for n in (1, 2, 5, 2 ** 64 - 1):
        seq.check("gas-1", n, 0.0, 2)
    seq.flush()
    conn.commit()
    h = Registry(conn, DeviceList([DeviceConfig("gas-1", "gas", bytes(32), None)])).health("gas-1")
    assert h == Health("gas-1", True, 2, 1764900000.0 - 12.5, "1.0", "gas", "power", 1764900001.0, -70.0, 88.5,
                       "10.0.0.7", 60.0, 1, 0, 1)
    again = SequenceTracker(conn, 1000, 10.0)
    assert again.check("gas-1", 2 ** 64 - 1, 0.0, 2).value == "duplicate"
    assert again.open_holes("gas-1") == 999  # the window below the 64-bit number, all of it missing
