"""Manhole cover switch: open and seated at either pin level, and built by its profile name."""

from drivercheck import eq
from simdev import SimPin

from drivers import make
from drivers.cover import Cover


def case_cover_switch():
    state = [0]
    cover = Cover(SimPin(lambda: state[0]))
    eq(cover.read(), False, "seated")
    state[0] = 1
    eq(cover.read(), True, "open")
    eq(Cover(SimPin(value=0), open_value=0).read(), True, "active-low switch")


def case_cover_made_by_profile_name():
    cover = make("cover", SimPin(value=0), {"open_value": 0})
    eq(type(cover) is Cover, True, "a Cover")
    eq((cover.values(), cover.poll()), (((None, True),), None), "open, nothing to poll")
