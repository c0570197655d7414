"""A request the desk refuses: the HTTP status it answers with, the message, and the times the message names.

A message writes its times in UTC (`utc`), which any client can read. The page shows every other time in the PC's
zone, so the answer lists each time as epoch seconds beside the text written, and the page puts its own rendering
in place of that text: one convention on the screen, whatever zone the desk runs in.
"""

from __future__ import annotations

import time
from typing import Any


def utc(at: float) -> str:
    return f"{time.strftime('%H:%M:%S', time.gmtime(at))} UTC"


class Refusal(Exception):
    """`times`: the epoch times `message` writes with `utc`, in its order."""

    def __init__(self, status: int, message: str, times: tuple[float, ...] = ()) -> None:
        super().__init__(message)
        self.status = status
        self.times = times

    def answer(self) -> dict[str, Any]:
        said: dict[str, Any] = {"error": str(self)}
        if self.times:
            said["times"] = [{"t": t, "text": utc(t)} for t in self.times]
        return said
