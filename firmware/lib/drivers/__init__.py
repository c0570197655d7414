"""Sensor drivers over HAL buses (ADC, I2C, UART, Pin). They never import `machine`: the HAL hands them
bus objects, real ones on an ESP32 and the models in firmware/sim/simdev.py under simulation.

Every driver has the two methods the sampler (app/sampler.py) calls, so it names no driver, module or
metric and a node interns only the names of the drivers its profile uses:
  values()  [(metric, value)] from one read, or Fault. A single-metric driver (Driver.values) names its
            metric None: the sampler takes it for the sensor's first metric in the profile.
  poll()    drains data the bus buffered (UART, accelerometer FIFO) between samples; a no-op in Driver.
A profile sensor's "driver" name is both the module (drivers/<name>.py) and its entry point, the class
bound to that name there: load() imports it, make() builds it. No table maps one to the other, so a
node interns no driver name its profile does not use."""


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
    return getattr(__import__("drivers." + name, None, None, (name,)), name)


def make(name, bus, args):
    """The driver for profile driver `name` on `bus`, with the profile's `args` as keyword arguments."""
    return load(name)(bus, **args)
