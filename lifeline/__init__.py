"""Host-side tools of lifeline-edge: the `lifeline` command, broker and interpreter runners."""

__version__ = "0.1.0"
