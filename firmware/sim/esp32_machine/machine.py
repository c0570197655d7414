"""machine, as far as hal/esp32.py uses it, for running the ESP32 backend on the unix port: the hardware
is the sim world's device models. A constructor finds the profile's sensor whose bus it names (ADC and Pin
by pin number, I2C by its two pins, UART by id and pins) and hands back the sim backend's (hal_sim.py's) proxy
for it; resets, deep sleep, the watchdog and RTC memory go to its Board. The constants are the ESP32 port's
values as micropython-esp32-stubs 1.29 gives them. Test equipment only: `lifeline flash` never ships it (a
board has the real module in ROM), and only a virtual device run with hal "esp32" has this directory on its path.
"""

import hal_sim as sim

import persist

PWRON_RESET = 1
HARD_RESET = 2
WDT_RESET = 3
DEEPSLEEP_RESET = 4
SOFT_RESET = 5
PIN_WAKE = 2
TIMER_WAKE = 4
_CAUSES = {"power-on": PWRON_RESET, "hard": HARD_RESET, "wdt": WDT_RESET, "deepsleep": DEEPSLEEP_RESET,
           "soft": SOFT_RESET}
_mark = persist.load(".hal.json") or {}  # what the chip keeps across a reset; read before the Board takes it
_board = []


def board():
    """The one sim Board behind every peripheral, made on first use (it starts the world if none answers)."""
    if not _board:
        _board.append(sim.Board(persist.load("device.json")))
    return _board[0]


def _bus(kind, **pins):
    sensors = persist.load("profile.json")["sensors"]
    for i in range(len(sensors)):
        b = sensors[i]["bus"]
        if b["type"] == kind and all(b.get(k) == pins[k] for k in pins):
            return sim.Bus(board(), i)
    raise ValueError("no %s sensor in profile.json at %r" % (kind, pins))


class Pin:
    IN = 1
    PULL_DOWN = 1
    PULL_UP = 2
    IRQ_RISING = 1
    IRQ_FALLING = 2

    def __init__(self, id, mode=-1, pull=-1):
        self.id = id
        self.proxy = None

    def sim_bus(self):
        """Looked up on first use: a Pin made only to name an ADC's or a bus's pin has no sensor of its own."""
        if self.proxy is None:
            self.proxy = _bus("pin", pin=self.id)
        return self.proxy

    def value(self):
        return self.sim_bus().value()

    def irq(self, handler=None, trigger=3):
        self.sim_bus().irq(handler, trigger)
        return self


class ADC:
    ATTN_11DB = 3

    def __init__(self, pin, atten=ATTN_11DB):
        self.proxy = _bus("adc", pin=pin.id)

    def read_uv(self):
        return self.proxy.read_uv()


def I2C(id, scl, sda, freq=400000):
    return _bus("i2c", scl=scl.id, sda=sda.id)


def UART(id, baudrate=9600, tx=None, rx=None, rxbuf=256):
    return _bus("uart", id=id, tx=tx, rx=rx)


def WDT(id=0, timeout=5000):
    return board().wdt(timeout)


class RTC:
    def memory(self, data=None):
        return board().memory(data)


def reset_cause():
    return _CAUSES[_mark.get("rst", "power-on")]


def wake_reason():
    return PIN_WAKE if _mark.get("pin") else TIMER_WAKE


def reset():
    """As the chip: the next start says HARD_RESET (ESP_RST_SW in ports/esp32/modmachine.c), not SOFT_RESET."""
    sim.reset("hard")


def soft_reset():
    sim.soft_reset()


def deepsleep(ms=0):
    board().deepsleep(ms)


def unique_id():
    return board().uid().encode()
