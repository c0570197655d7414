"""Sensor drivers over HAL buses (ADC, I2C, UART, Pin). They never import `machine`: the HAL hands them
bus objects, real ones on an ESP32 and the models in hal/simdev.py under simulation.

Every driver has the two methods the sampler (app/sampler.py) calls, so it names no driver, module or
metric and a node interns only the names of the drivers its profile uses:
  values()  [(metric, value)] from one read, or Fault. A single-metric driver (Driver.values) names its
            metric None: the sampler takes it for the sensor's first metric in the profile.
  poll()    drains data the bus buffered (UART, accelerometer FIFO) between samples; a no-op in Driver.
A profile sensor's "driver" name is the entry point (the class) of the same name in the module of that
name, or of the name _MODULE gives: load() imports it, make() builds it."""

_MODULE = {"adxl345": "accel", "cover": "level", "rain": "pulse"}  # profile driver name -> module, where not the same


class Fault(Exception):
    """A sensor answered with a condition instead of a reading. `reason` is a short fixed word, so the
    sampler can count and log it once; `value` is the raw evidence (mA, device id, ...)."""

    def __init__(self, reason, value=None):
        super().__init__(reason, value)
        self.reason = reason
        self.value = value


class Driver:
    """Base of the drivers: one metric from read(), nothing to poll."""

    def values(self):
        return ((None, self.read()),)

    def poll(self):
        pass


def load(name):
    """The driver class for profile driver `name`, its module imported."""
    return getattr(__import__("drivers." + _MODULE.get(name, name), None, None, (name,)), name)


def make(name, bus, args):
    """The driver for profile driver `name` on `bus`, with the profile's `args` as keyword arguments."""
    return load(name)(bus, **args)
