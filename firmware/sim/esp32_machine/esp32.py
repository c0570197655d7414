"""esp32.wake_on_ext0 for the ESP32 backend on the unix port (see machine.py here)."""

import machine

WAKEUP_ALL_LOW = False
WAKEUP_ANY_HIGH = True


def wake_on_ext0(pin, level):
    machine.board().wake_on(pin.sim_bus(), 1 if level else 0)
