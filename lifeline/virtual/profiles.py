"""Device profiles for short runs of the real firmware: each profile sped up so a run of seconds sees
several cycles, and a scripted world per profile that crosses its pre-alarm levels within such a run. The
firmware tests, the firmware bench and the soak all feed their virtual devices from here."""

from __future__ import annotations

import json
from typing import Any

from lifeline import upy

PROFILES = upy.FIRMWARE / "profiles"

# A scripted world per profile that crosses its pre-alarm levels within a short run.
STIMULUS: dict[str, dict[str, list[list[Any]]]] = {
    "gas": {"ch4": [[0, 1.0], [6, 14.0], [12, 3.0]], "temp": [[0, 12.0]]},
    "water": {"pressure": [[0, 420000], [8, 180000]]},
    "drainage": {"level": [[0, 0.4], [10, 2.4]], "cover": [[0, False], [6, True]]},
    "bridge": {"tilt_x": [[0, 0.001], [10, 0.03]], "tilt_y": [[0, 0.002]], "vib": [[0, 0.1], [8, 3.0]]},
    "rain": {"rain_rate": [[0, 400.0]]},
    "drone": {"lat": [[0, 31.2304], [15, 31.2404]], "lon": [[0, 121.4737]], "alt": [[0, 80.0]], "fix": [[0, 1]],
              "ch4": [[0, 1.0], [8, 14.0]]},
}


def load_profile(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((PROFILES / f"{name}.json").read_text())
    return data


def sped_up(name: str) -> dict[str, Any]:
    """A profile with its schedule shortened so a short run sees several cycles."""
    p = load_profile(name)
    for s in p["sensors"]:
        s["sample_s"] = min(s["sample_s"], 2)
    p["report_s"] = 3
    p["health_s"] = 5
    if p.get("sleep"):
        p["sleep"]["wake_s"] = 2
    return p
