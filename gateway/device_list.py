"""The site's registered devices, packed: what the gateway holds of every device, whether it is heard or not.

A dict of one `DeviceConfig` a device costs about 230 bytes a device (the object, its id, its key as its own bytes
object, the dict's slot): 11 MB at 50,000 devices, the largest thing in the daemon (docs/performance.md).
Packed, a device is its id string, one byte of class, 32 bytes of key in one buffer and, where any device has
a position, 16 bytes of coordinates: about 5 MB. A lookup finds the id by bisection and builds the
`DeviceConfig` then; the id in it is the one kept here, so the per-device tables that key by it share it.
"""

from __future__ import annotations

import math
from array import array
from bisect import bisect_left
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from itertools import pairwise
from typing import NamedTuple

KEY_BYTES = 32  # a device's HMAC key (protocol/auth.py)


class DeviceConfig(NamedTuple):
    """One registered device, built at each lookup of the packed list: a NamedTuple, built in half a frozen
    dataclass's time (0.31 against 0.65 µs)."""

    id: str
    cls: str
    key: bytes
    position: tuple[float, float] | None

    def __repr__(self) -> str:  # never the key: a config or a device may be logged
        return f"DeviceConfig(id={self.id!r}, cls={self.cls!r}, position={self.position!r})"


class DeviceList(Mapping[str, DeviceConfig]):
    """Device id -> DeviceConfig, in id order; its value never changes once built (share_ids swaps equal
    strings only). Ids must be distinct (site_config checks that first, to name both places a device is listed)."""

    __slots__ = ("_classes", "_ids", "_keys", "_kinds", "_last", "_positions")

    def __init__(self, devices: Iterable[DeviceConfig] = ()) -> None:
        ids: list[str] = []
        kinds: dict[str, int] = {}
        classes = bytearray()
        keys = bytearray()
        positions = array("d")
        for dev in devices:  # consumed one at a time: a devices file's rows need never be held as objects
            if len(dev.key) != KEY_BYTES:
                raise ValueError(f"device {dev.id!r}: a key is {KEY_BYTES} bytes, not {len(dev.key)}")
            ids.append(dev.id)
            classes.append(kinds.setdefault(dev.cls, len(kinds)))
            keys += dev.key
            positions.extend(dev.position or (math.nan, math.nan))
        if any(before >= after for before, after in pairwise(ids)):  # a file in id order skips the copies
            ids, classes, keys, positions = _in_order(ids, classes, keys, positions)
        self._ids = ids
        self._kinds = tuple(kinds)
        self._classes = bytes(classes)
        self._keys = bytes(keys)
        self._positions = None if all(math.isnan(x) for x in positions) else positions
        self._last: DeviceConfig | None = None  # a message looks its device up more than once

    def share_ids(self, other: DeviceList) -> None:
        """Take `other`'s string for each id both hold. The per-device tables keep the strings of the list
        they were filled from: a reloaded registry with strings of its own would hold every id twice."""
        for i, dev in enumerate(self._ids):
            at = other._index(dev)
            if at >= 0:
                self._ids[i] = other._ids[at]
        self._last = None

    def _index(self, dev: object) -> int:
        """Where `dev` is, or -1."""
        if not isinstance(dev, str):
            return -1
        i = bisect_left(self._ids, dev)
        return i if i < len(self._ids) and self._ids[i] == dev else -1

    def __getitem__(self, dev: str) -> DeviceConfig:
        last = self._last
        if last is not None and last.id == dev:
            return last
        i = self._index(dev)
        if i < 0:
            raise KeyError(dev)
        position = None
        if self._positions is not None and not math.isnan(self._positions[2 * i]):
            position = (self._positions[2 * i], self._positions[2 * i + 1])
        found = self._last = DeviceConfig(self._ids[i], self._kinds[self._classes[i]],
                                          self._keys[KEY_BYTES * i:KEY_BYTES * (i + 1)], position)
        return found

    def __contains__(self, dev: object) -> bool:
        return self._index(dev) >= 0

    def key_for(self, kid: bytes) -> bytes | None:
        """The key of the device a COSE key id names (protocol.auth.verify's lookup), or None."""
        try:
            dev = kid.decode()
        except UnicodeDecodeError:
            return None
        last = self._last  # the ingest looked the device up by its topic just before
        if last is not None and last.id == dev:
            return last.key
        i = self._index(dev)
        return None if i < 0 else self._keys[KEY_BYTES * i:KEY_BYTES * (i + 1)]

    def class_counts(self) -> dict[str, int]:
        """Devices listed of each class."""
        counts = Counter(self._classes)
        return {cls: counts[i] for i, cls in enumerate(self._kinds) if counts[i]}

    def __iter__(self) -> Iterator[str]:
        return iter(self._ids)

    def __len__(self) -> int:
        return len(self._ids)

    def __repr__(self) -> str:
        return f"<DeviceList of {len(self._ids)} devices>"


def _in_order(ids: list[str], classes: bytearray, keys: bytearray,
              positions: array[float]) -> tuple[list[str], bytearray, bytearray, array[float]]:
    """The devices in id order, each key copied once (slices joined cost 10 MB at 50,000 devices)."""
    order = sorted(range(len(ids)), key=ids.__getitem__)
    ids = [ids[i] for i in order]
    for before, after in pairwise(ids):
        if before == after:
            raise ValueError(f"device {after!r} is listed twice")
    given_keys, given_positions = memoryview(keys), positions
    keys, positions = bytearray(len(keys)), array("d", [math.nan]) * len(positions)
    for to, i in enumerate(order):
        keys[KEY_BYTES * to:KEY_BYTES * (to + 1)] = given_keys[KEY_BYTES * i:KEY_BYTES * (i + 1)]
        positions[2 * to:2 * to + 2] = given_positions[2 * i:2 * i + 2]
    return ids, bytearray(classes[i] for i in order), keys, positions
