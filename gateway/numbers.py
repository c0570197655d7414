"""A number from outside (a device, the district, a config file, a form) as a float a column or a comparison
can take: JSON, TOML and CBOR all carry integers of any size, which `math.isfinite` and `float` refuse with an
OverflowError rather than an answer."""

from __future__ import annotations

import math


def finite(value: object) -> float | None:
    """`value` as a float if it is a finite number: not a bool, not an integer past a float's range, not NaN
    or an infinity; else None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None
