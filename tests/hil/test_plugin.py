"""The bench plugin's command line, markers and reports, in pytest runs of their own (pytester)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hil_tests.testbed import DeviceSpec

pytest_plugins = ["pytester"]

SUITE = '''
import pytest

@pytest.mark.hardware("reads the real ADC's loop current")
def test_needs_a_board():
    raise AssertionError("must not run on a virtual bench")

def test_measures(latency):
    latency.record("step", 0.25)
    latency.record("step", 0.75)

def test_fails():
    assert 1 == 2
'''


def test_device_specs() -> None:
    assert DeviceSpec.parse("virtual") == DeviceSpec("virtual")
    spec = DeviceSpec.parse("serial:/dev/ttyUSB0,profile=water,id=water-hw1,stim=/dev/ttyACM0,rig=rig.json")
    assert (spec.kind, spec.port, spec.profile, spec.dev_id, spec.stim, spec.rig) == (
        "serial", "/dev/ttyUSB0", "water", "water-hw1", "/dev/ttyACM0", Path("rig.json"))
    for bad, why in [("serial:", "expected"), ("usb:/dev/x", "expected"), ("serial:/dev/x,colour=red", "unknown"),
                     ("serial:/dev/x,profile=lamp", "not one of"), ("serial:/dev/x,stim=/dev/y", "go together")]:
        with pytest.raises(ValueError, match=why):
            DeviceSpec.parse(bad)


@pytest.fixture(autouse=True)
def ini(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")


def test_hardware_tests_skip_with_their_reason_and_reports_are_written(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_suite=SUITE)
    result = pytester.runpytest("-ra", "--hil-json", "report.json", "--junitxml", "junit.xml")
    result.assert_outcomes(passed=1, failed=1, skipped=1)
    result.stdout.fnmatch_lines(["*SKIPPED*hardware: reads the real ADC's loop current "
                                 "(the bench has only virtual devices)*"])
    report = json.loads((pytester.path / "report.json").read_text())
    tests = {t["test"].split("::")[1]: t for t in report["tests"]}
    assert tests["test_measures"]["latencies_s"] == {"step": [0.25, 0.75]}
    assert tests["test_fails"]["outcome"] == "failed" and "assert 1 == 2" in tests["test_fails"]["failure"]
    assert tests["test_needs_a_board"]["outcome"] == "skipped"
    assert report["summary"]["latency_s"]["step"] == {"n": 2, "min": 0.25, "median": 0.5, "max": 0.75}
    junit = (pytester.path / "junit.xml").read_text()
    assert 'name="latency:step" value="0.25"' in junit
    assert report["devices"] == []  # no test asked for the bench, so none was set up


def test_a_board_spec_enables_hardware_tests_and_needs_a_bench_host(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_suite="import pytest\n\n@pytest.mark.hardware('x')\ndef test_hw(dut):\n    pass\n")
    result = pytester.runpytest("--device", "serial:/dev/null-board")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*real boards need --bench-host*"])


def test_a_bad_device_option_is_a_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_suite="def test_x():\n    pass\n")
    result = pytester.runpytest("--device", "serial:/dev/x,colour=red")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*unknown option 'colour=red'*"])
