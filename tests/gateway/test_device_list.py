"""The packed device list answers as the dict of DeviceConfig it replaces, and hands out one id object per device."""

from __future__ import annotations

import random

import pytest

from gateway.device_list import DeviceConfig, DeviceList
from gateway.rules import DEVICE_CLASSES


def devices(n: int, seed: int, placed: float) -> list[DeviceConfig]:
    rng = random.Random(seed)
    ids = rng.sample(range(10 * n), n)
    return [DeviceConfig(f"d{i}", rng.choice(DEVICE_CLASSES), rng.randbytes(32),
                         (rng.uniform(-90, 90), rng.uniform(-180, 180)) if rng.random() < placed else None)
            for i in ids]


@pytest.mark.parametrize("in_order", [False, True], ids=["shuffled", "in-id-order"])
@pytest.mark.parametrize("placed", [0.0, 0.3, 1.0])
@pytest.mark.parametrize("seed", range(3))
def test_it_answers_as_the_dict_does(seed: int, placed: float, in_order: bool) -> None:
    given = devices(500, seed, placed)
    if in_order:  # a file written in id order is taken as it is, without the copies that sort it
        given.sort(key=lambda d: d.id)
    packed, plain = DeviceList(given), {d.id: d for d in given}
    assert len(packed) == len(plain)
    assert list(packed) == sorted(plain)
    assert packed == plain
    rng = random.Random(seed)
    for dev in [*rng.sample(sorted(plain), 200), f"d{10 * 500 + 1}", "", "zzz"]:
        assert (dev in packed) == (dev in plain)
        assert packed.get(dev) == plain.get(dev)
    assert dict(packed.items()) == plain


def test_a_lookup_gives_the_id_object_it_keeps() -> None:
    """The per-device tables key by the looked-up id: a fresh string each lookup would be kept once each."""
    packed = DeviceList(devices(50, 1, 0.5))
    first, second = sorted(packed)[:2]
    asked = "".join(first)  # an equal string that is another object, as a topic gives
    kept = packed[asked].id
    assert kept == first and kept is not asked
    assert packed[second].id == second  # a lookup in between, past the one-entry memo
    assert packed["".join(first)].id is kept


def test_what_it_does_not_hold() -> None:
    packed = DeviceList(devices(20, 2, 0.0))
    with pytest.raises(KeyError):
        packed["nobody"]
    assert packed.get("nobody") is None
    assert 5 not in packed and None not in packed
    assert len(DeviceList()) == 0 and list(DeviceList()) == [] and "d1" not in DeviceList()


def test_it_refuses_a_twice_listed_id_and_a_key_of_another_size() -> None:
    one = DeviceConfig("a", "gas", bytes(32), None)
    with pytest.raises(ValueError, match="'a' is listed twice"):
        DeviceList([one, DeviceConfig("b", "gas", bytes(32), None), one])
    with pytest.raises(ValueError, match="'a' is listed twice"):
        DeviceList([one, one])
    with pytest.raises(ValueError, match="32 bytes, not 31"):
        DeviceList([DeviceConfig("a", "gas", bytes(31), None)])


def test_a_reloaded_list_takes_the_id_strings_of_the_one_it_replaces() -> None:
    """The per-device tables keep the strings of the list they were filled from (Registry.replace)."""
    given = devices(30, 3, 0.5)
    old = DeviceList(given)
    new = DeviceList([DeviceConfig("".join(d.id), d.cls, d.key, d.position) for d in given[5:]]
                     + [DeviceConfig("added", "rain", bytes(32), None)])
    new.share_ids(old)
    assert new == {d.id: d for d in [*given[5:], DeviceConfig("added", "rain", bytes(32), None)]}
    for dev in given[5:]:
        assert new[dev.id].id is old[dev.id].id
    assert "added" in new and given[0].id not in new


def test_a_device_and_the_list_never_show_a_key() -> None:
    """A device is logged (a birth, a refusal) and a config printed while debugging: the key stays out."""
    key = bytes(range(32))
    devices = DeviceList([DeviceConfig("gas-1", "gas", key, (31.2, 121.5))])
    text = repr(devices["gas-1"]) + repr(devices) + str(devices["gas-1"])
    assert "gas-1" in text and "31.2" in text
    assert repr(key) not in text and key.hex() not in text and "key" not in text
