"""ntptime for the ESP32 backend on the unix port: a sync succeeds when the sim world's NTP does
(see machine.py here). The unix port's clock is the host's, so the time itself is never wrong."""

import machine

host = "pool.ntp.org"


def settime():
    if not machine.board().ntp([host]):
        raise OSError(110)  # ETIMEDOUT, as ntptime raises when no answer comes
