"""The virtual-site kit: real Mosquitto brokers, virtual boards running the real firmware on the MicroPython
unix port, their stimulus, a wire-level load generator, a site (brokers, site.toml, the gateway process) and a
district recorder. Tests, the bench (hil_tests/), the demo and bench/ all build their sites from it."""
