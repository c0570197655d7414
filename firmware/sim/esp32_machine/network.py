"""network.WLAN for the ESP32 backend on the unix port: the link is the sim world's network flag
(see machine.py here). The station is always "associated" unless the world has cut the network."""

import asyncio

import machine

STA_IF = 0


class WLAN:
    def __init__(self, interface=STA_IF):
        self.b = machine.board()
        self.polling = False

    def isconnected(self):
        """First called from the backend's connect(), inside the event loop: the world's poll starts
        there, the one task a board's hardware does without."""
        if not self.polling:
            self.polling = True
            for coro in self.b.services():
                asyncio.create_task(coro)
        return self.b.online()

    def active(self, on=None):
        return True

    def connect(self, ssid=None, key=None):
        pass

    def disconnect(self):
        pass

    def status(self, param=None):
        return self.b.rssi()

    def ifconfig(self):
        return (self.b.ip(), "255.255.255.0", "127.0.0.1", "127.0.0.1")
