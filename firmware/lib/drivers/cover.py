"""A manhole cover's open or tilt switch on a pin: drainage nodes report a cover lifted at once (with a
sleeping profile the pin also wakes the node, app/sleeper.py)."""

from drivers import Driver


class Cover(Driver):
    """Manhole cover switch or tilt switch on a Pin (value()); `open_value` is the pin level that
    means open or tilted (1 with a pull-up and a switch that closes to ground when seated)."""

    def __init__(self, pin, open_value=1):
        self.pin = pin
        self.open_value = open_value

    def read(self):
        return self.pin.value() == self.open_value


cover = Cover  # the profile's driver name: the entry point drivers.make() looks up
