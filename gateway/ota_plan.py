"""A staged rollout's rules, one copy for both drivers: `lifeline ota rollout` at a site (reading the gateway's
store) and the district desk's rollouts (district/rollout.py, reading the district's tables). Each driver
builds a NodeOta per node from what it can trust and asks `verdict` what that node's state is; the stages,
the canary's size and the halt rule are decided here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from gateway.ota_relay import NodeOta

SENDS = 3  # times a node that did not answer is sent the command
# A stage's longest wait, past any node's wake interval; the command's expiry (epoch seconds) stays far inside
# the 64 bits a node takes, and every wait inside what time.sleep can hold.
MAX_STAGE_S = 7 * 86400.0


class PlanError(ValueError):
    pass


@dataclass
class Stage:
    name: str
    devices: list[str]
    sent_at: float = 0.0
    landed: set[str] = field(default_factory=set)
    failed: dict[str, str] = field(default_factory=dict)

    def open(self) -> list[str]:
        return [d for d in self.devices if d not in self.landed and d not in self.failed]


def version_key(v: str) -> tuple[int, ...]:
    """Release versions are numbers and dots; anything else sorts below every release."""
    try:
        return tuple(int(x) for x in v.split("."))
    except ValueError:
        return ()


def canary_size(text: str, n: int) -> int:
    """A canary as a count, or a share of the nodes ("10%"): at least one node, at most all. A negative one is
    refused, as a negative wave is: a typo, not a canary of one."""
    share = text.endswith("%")
    try:
        number = float(text[:-1]) if share else int(text)
        if not number >= 0:  # NaN too
            raise ValueError(text)
        k = round(n * number / 100) if share else int(number)
    except (ValueError, OverflowError):  # OverflowError: an infinite share
        raise PlanError(f"canary {text!r}: a number of nodes or a share like 10%") from None
    return max(1, min(n, k))


def targets(nodes: Mapping[str, tuple[str, str]], profiles: Sequence[str], version: str
            ) -> tuple[list[str], list[str]]:
    """(nodes to update, why each other one is skipped) from each node's (class, version it runs)."""
    chosen, skipped = [], []
    for dev in sorted(nodes):
        cls, running = nodes[dev]
        if cls not in profiles:
            skipped.append(f"{dev} (class {cls}: not in the release)")
        elif running and version_key(running) >= version_key(version):
            skipped.append(f"{dev} (runs {running})")
        else:
            chosen.append(dev)
    return chosen, skipped


def rolled_back(n: NodeOta, version: str) -> str:
    """Why the node's trial of `version` rolled back, from its last outcome, or "" if it did not."""
    return n.res if n.outcome_v == version and n.ok is False and n.res.startswith("rolled back") else ""


def hold_back(chosen: Sequence[str], nodes: Mapping[str, NodeOta], version: str
              ) -> tuple[list[str], dict[str, str], list[str]]:
    """(the nodes of `chosen` to send the release, those whose trial of it rolled back with why, a skip line for
    each). A rerun of a release leaves such nodes out unless asked: it would most likely fail on them the same
    way, a download, a reboot and a trial for nothing on each."""
    held = {d: why for d in chosen if (n := nodes.get(d)) is not None and (why := rolled_back(n, version))}
    return ([d for d in chosen if d not in held], held,
            [f"{d} (its trial of {version} {why})" for d, why in held.items()])


def stages(chosen: Sequence[str], canary: str, wave: int) -> list[Stage]:
    """The canary group first, then the rest in waves of `wave` nodes (0: all the rest at once)."""
    k = canary_size(canary, len(chosen))
    rest = list(chosen[k:])
    size = wave if wave > 0 else len(rest) or 1
    return [Stage("canary", list(chosen[:k]))] + [Stage(f"wave {i // size + 1}", rest[i:i + size])
                                                  for i in range(0, len(rest), size)]


def verdict(n: NodeOta, ack: tuple[bool, str] | None, version: str, since: float) -> tuple[str, str]:
    """A node's state in a stage sent at `since`: ("landed", ...), ("failed", why), ("download", "done/total"),
    ("took", "") once it acknowledged the command, or ("waiting", ""). Only news from after `since` counts."""
    if n.running == version and (n.born_at or 0) >= since:
        return "landed", f"running {version}"
    if n.outcome_v == version and n.ok is False and (n.outcome_at or 0) >= since:
        return "failed", n.res
    if ack is not None and not ack[0]:
        return "failed", f"refused the command: {ack[1]}"
    if n.target == version and n.total and (n.asked_at or 0) >= since:
        return "download", f"{n.done}/{n.total}"
    return ("took", "") if ack else ("waiting", "")


def halt(failed: int, sent: int, share: float, version: str) -> str:
    """Why the rollout stops before its next stage, or "" to go on (judged when a stage ends)."""
    if failed > share * sent:
        return f"{failed} of {sent} nodes sent {version} failed, above the halt share {share:g}"
    return ""
