"""The port's socket module with a site's DNS server behind getaddrinfo, for tests/firmware/test_mqtt_client.py,
which builds it as socket.mpy ahead of the built-in. Each lookup of a name in `names` is said ("LOOKUP name") and
answered with its address; once `dead[0]` is set the server no longer answers: a lookup blocks 1 s and fails, as an
ESP32's does once lwIP's retries are spent (seconds a server there)."""

import time

import usocket
from usocket import *  # noqa: F403 (the port's socket, whole)

dead = [False]
names = {"broker.site": "127.0.0.1"}


def getaddrinfo(host, port, *args):
    if host in names:
        print("LOOKUP", host)
        if dead[0]:
            time.sleep(1)
            raise OSError(-202)  # what the ESP32 port raises for a name it could not resolve
        host = names[host]
    return usocket.getaddrinfo(host, port, *args)
