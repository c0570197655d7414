"""app/sleeper.py's wake-pin logic against a fake board: what a deep sleep keeps of the rain gauge in RTC
memory, and what a tip's wake does with it (count, sleep again, or report). Run in a scratch directory:
the sleeper clears the crash counter in state.json before it sleeps."""

from drivercheck import Clock, eq, near
from simdev import SimPin

from app import sleeper
from drivers.rain import RainGauge


class Slept(Exception):
    pass


class Board:
    """The HAL calls the sleeper makes; deepsleep() raises Slept, as the process would end there."""

    def __init__(self, now, mem=b"", pin_wake=False):
        self.now = now
        self.mem = mem
        self.pin_wake = pin_wake
        self.armed = None
        self.slept = None

    def rtc_ms(self):
        return self.now

    def memory(self, data=None):
        if data is None:
            return self.mem
        self.mem = bytes(data)

    def woke_by_pin(self):
        return self.pin_wake

    def wake_on(self, pin, level):
        self.armed = (pin, level)

    def deepsleep(self, ms):
        self.slept = ms
        raise Slept()


class Sensor:
    def __init__(self, clock, pin=None):
        self.name = "gauge"
        self.kind = "rain"
        self.drv = RainGauge(pin or SimPin(), mm_per_tip=0.2, debounce_ms=200, clock=clock)


class App:
    def __init__(self, board):
        self.board = board
        self.st = {"boot": 1, "crash": 1}


def _sleep(app, s, ms):
    try:
        sleeper._sleep(app, ms, s, 0)
    except Slept:
        return True
    return False


def _wake(app, s):
    """True when the wake went back to sleep, False when it returned for a full cycle."""
    try:
        sleeper._tip(app, s)
    except Slept:
        return True
    return False


def _asleep_with_two_tips(rtc):
    """A node that reported at rtc - 60 s, counted two tips since, and sleeps 240 s from rtc."""
    clock = Clock(1000)
    s = Sensor(clock)
    s.drv.take()
    clock.t = 31000
    s.drv.tip()
    clock.t = 51000
    s.drv.tip()
    clock.t = 61000
    board = Board(rtc)
    app = App(board)
    eq(_sleep(app, s, 240000), True, "slept")
    eq((board.slept, board.armed[1], app.st["crash"]), (240000, 0, 0), "ms, wake level, crash counter cleared")
    return board.mem


def case_tip_wake_counts_and_sleeps_until_the_report():
    mem = _asleep_with_two_tips(10 ** 12)
    board = Board(10 ** 12 + 100000, mem, pin_wake=True)  # a tip 100 s into the 240 s sleep
    s = Sensor(Clock(500))
    eq(_wake(App(board), s), True, "back to sleep")
    eq(board.slept, 140000, "for the rest of the interval")
    eq(board.armed[0] is s.drv.pin, True, "on the gauge's pin")
    eq(s.drv.kept(), (3, 160000, 0), "three tips, the interval began 160 s ago, the last tip just now")
    # the next tip, 70 s later: the report is still 70 s off
    board2 = Board(board.now + 70000, board.mem, pin_wake=True)
    s2 = Sensor(Clock(0))
    eq(_wake(App(board2), s2), True, "back to sleep again")
    eq((board2.slept, s2.drv.kept()), (70000, (4, 230000, 0)), "due time unchanged, four tips")


def case_tip_wake_near_the_report_reports():
    mem = _asleep_with_two_tips(5000)
    board = Board(5000 + 239500, mem, pin_wake=True)
    clock = Clock(0)
    s = Sensor(clock)
    eq(_wake(App(board), s), False, "half a second before the report: report now")
    mm, rate = s.drv.take()
    near(mm, 0.6, 1e-9, "the two kept tips and this one")
    near(rate, 0.6 * 3600000 / 299500, 1e-9, "mm/h over the 299.5 s since the last report")


def case_timer_wake_restores_without_a_tip():
    mem = _asleep_with_two_tips(5000)
    board = Board(5000 + 240000, mem)
    clock = Clock(0)
    s = Sensor(clock)
    eq(_wake(App(board), s), False, "a timed wake reports")
    clock.t = 1000
    mm, rate = s.drv.take()
    near(mm, 0.4, 1e-9, "the two kept tips")
    near(rate, 0.4 * 3600000 / 301000, 1e-9, "mm/h")


def case_debounce_holds_across_a_wake():
    clock = Clock(0)
    s = Sensor(clock)
    s.drv.tip()
    clock.t = 50
    board = Board(7000)
    _sleep(App(board), s, 60000)
    board = Board(7100, board.mem, pin_wake=True)  # 150 ms after that tip: its bounce
    s = Sensor(Clock(0))
    eq(_wake(App(board), s), True, "back to sleep")
    eq((s.drv.tips, s.drv.bounces), (1, 1), "the kept tip, and the wake taken for a bounce")


def case_memory_of_something_else_is_ignored():
    for mem in (b"", b"\x00" * 7, b"\x00" * 28):
        board = Board(10 ** 9, mem, pin_wake=True)
        s = Sensor(Clock(0))
        eq(_wake(App(board), s), False, "no kept figures: a full cycle")
        eq(s.drv.kept(), (0, 0, -1), "the gauge starts afresh")


def case_a_switch_stuck_closed_is_not_armed():
    s = Sensor(Clock(0), SimPin(value=0))
    board = Board(1000)
    eq(_sleep(App(board), s, 60000), True, "slept")
    eq(board.armed, None, "the timer only: a closed switch would wake the chip again at once")
    eq(len(board.mem), 28, "the figures are kept all the same")


class NoWakePin(Board):
    def wake_on(self, pin, level):
        raise ValueError("invalid pin")


def case_a_pin_that_cannot_wake_the_chip_leaves_the_timer():
    s = Sensor(Clock(0))
    board = NoWakePin(1000)
    eq(_sleep(App(board), s, 60000), True, "slept all the same")
    eq(board.slept, 60000, "on the timer")
