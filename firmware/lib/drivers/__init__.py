"""Sensor drivers over HAL buses (ADC, I2C, UART, Pin). They never import `machine`: the HAL hands them
bus objects, real ones on an ESP32 and the models in hal/simdev.py under simulation."""


class Fault(Exception):
    """A sensor answered with a condition instead of a reading. `reason` is a short fixed word, so the
    sampler can count and log it once; `value` is the raw evidence (mA, device id, ...)."""

    def __init__(self, reason, value=None):
        super().__init__(reason, value)
        self.reason = reason
        self.value = value
