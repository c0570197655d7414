"""Text the desk is given: one check of its characters for every place that keeps or shows it.

Any text posted must be storable: a NUL (PostgreSQL's text refuses it) or a lone surrogate (JSON can escape
one, UTF-8 cannot hold it) fails in the driver, a 500. Text a person reads (a work order's team, findings,
action and correction) must also be legible: no control character but tab and newline (C0, DEL, C1), and no
bidirectional embedding, override or isolate (U+202A-U+202E, U+2066-U+2069), which reorder what follows, so
that a dispatched order reads differently to the team than to the officer who wrote it. And a text that is
required must be `readable`: something in it draws.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any

UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
FILLERS = frozenset("\u115f\u1160\u3164\uffa0\u2800")  # letters that draw nothing: Hangul's fillers, Braille's blank
ILLEGIBLE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


def storable(value: Any, refused: re.Pattern[str] = UNSTORABLE) -> bool:
    """Whether no text in a value (a string, or JSON's lists and maps of them, keys too) holds a character
    `refused` matches."""
    todo = [value]
    while todo:
        item = todo.pop()
        if isinstance(item, str):
            if refused.search(item):
                return False
        elif isinstance(item, dict):
            todo += item.keys()
            todo += item.values()
        elif isinstance(item, list):
            todo += item
    return True


def readable(text: str) -> bool:
    """Whether a text has something a person sees: a character that is no blank, no format character (Cf: the
    zero-width ones, direction marks), no filler and no mark (Mn, Me), which has nothing to mark alone."""
    return any(not c.isspace() and c not in FILLERS and unicodedata.category(c) not in ("Cf", "Mn", "Me")
               for c in text)
