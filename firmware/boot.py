"""Runs first on a board, before main.py. It stays empty on purpose: the unix port never runs boot.py,
so everything a node needs at start (boot count, safe-mode check, config trial) lives behind main.py
and a virtual device boots exactly like a board."""
