"""gateway/ota_plan.py: the rules both rollout drivers follow (the site's `lifeline ota rollout`, the desk's)."""

from __future__ import annotations

import pytest

from gateway import ota_plan
from gateway.ota_relay import NodeOta

V = "0.2.0"


def test_targets_are_the_releases_profiles_on_an_older_version() -> None:
    chosen, skipped = ota_plan.targets({"g1": ("gas", "0.1.0"), "g2": ("gas", "0.2.0"), "g3": ("gas", "0.10.0"),
                                        "r1": ("rain", "0.1.0"), "g4": ("gas", "")}, ["gas"], V)
    assert chosen == ["g1", "g4"]  # a node never born yet is updated too
    assert skipped == ["g2 (runs 0.2.0)", "g3 (runs 0.10.0)", "r1 (class rain: not in the release)"]


@pytest.mark.parametrize(("canary", "wave", "sizes"), [
    ("1", 0, [1, 9]), ("20%", 0, [2, 8]), ("20%", 3, [2, 3, 3, 2]), ("0", 0, [1, 9]), ("50", 0, [10]),
    ("0.1%", 4, [1, 4, 4, 1])])
def test_a_canary_then_waves(canary: str, wave: int, sizes: list[int]) -> None:
    devices = [f"d{i:02}" for i in range(10)]
    stages = ota_plan.stages(devices, canary, wave)
    assert [len(s.devices) for s in stages] == sizes
    assert [d for s in stages for d in s.devices] == devices
    assert stages[0].name == "canary" and [s.name for s in stages[1:]] == [f"wave {i}" for i in range(1, len(sizes))]


def test_a_canary_that_is_neither_a_count_nor_a_share_is_refused() -> None:
    with pytest.raises(ota_plan.PlanError, match="canary 'some'"):
        ota_plan.stages(["d1"], "some", 0)


def test_a_nodes_verdict_counts_only_news_after_the_stage_was_sent() -> None:
    since = 100.0
    old = NodeOta("d", running=V, born_at=99.0, outcome_v=V, ok=False, res="rolled back", outcome_at=99.0,
                  target=V, done=10, total=20, asked_at=99.0)
    assert ota_plan.verdict(old, None, V, since) == ("waiting", "")
    assert ota_plan.verdict(old, (True, ""), V, since) == ("took", "")
    assert ota_plan.verdict(old, (False, "busy"), V, since) == ("failed", "refused the command: busy")
    fresh = NodeOta("d", target=V, done=10, total=20, asked_at=101.0)
    assert ota_plan.verdict(fresh, (True, ""), V, since) == ("download", "10/20")
    fresh.outcome_v, fresh.ok, fresh.res, fresh.outcome_at = V, False, "refused: bad signature", 102.0
    assert ota_plan.verdict(fresh, (True, ""), V, since) == ("failed", "refused: bad signature")
    fresh.running, fresh.born_at = V, 103.0
    assert ota_plan.verdict(fresh, (True, ""), V, since) == ("landed", f"running {V}")


def test_the_halt_rule_is_more_than_the_share() -> None:
    assert ota_plan.halt(1, 4, 0.25, V) == ""
    assert ota_plan.halt(2, 4, 0.25, V) == f"2 of 4 nodes sent {V} failed, above the halt share 0.25"
    assert ota_plan.halt(1, 1, 0.0, V) != "" and ota_plan.halt(0, 1, 0.0, V) == ""
