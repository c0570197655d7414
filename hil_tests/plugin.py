"""pytest plugin for the bench (entry point `lifeline_hil`): device options, markers, fixtures, reports.

    pytest hil_tests                                  # virtual devices (the default)
    pytest hil_tests --count 3                        # three virtual devices per profile the tests need
    pytest hil_tests --device serial:/dev/ttyUSB0,profile=gas,stim=/dev/ttyACM0,rig=rig.json \
        --bench-host 192.168.4.2 --wifi-ssid bench --wifi-password ...

Fixtures: `site` (brokers and gateway), `dut` (the devices of the test's profile, `@pytest.mark.profile`,
gas by default), `district` (what reached the district since the test began), `latency` (records
latencies into the reports). Tests marked `hardware` run only on real boards. Everything is set up on first
use, so a pytest run that needs no bench (tests/) never starts one.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from hil_tests.report import JsonReport, LatencyLog
from hil_tests.testbed import DeviceSpec, District, Dut, Testbed, TestbedError
from lifeline.virtual.site import Site

SPECS = pytest.StashKey[list[DeviceSpec]]()
PROFILES = pytest.StashKey[set[str]]()
DEFAULT_PROFILE = "gas"
BENCH_FIXTURES = {"site", "dut", "district", "testbed"}


def pytest_addoption(parser: pytest.Parser) -> None:
    g = parser.getgroup("lifeline_hil", "lifeline bench (hil_tests, docs/hil.md)")
    g.addoption("--device", action="append", default=[], metavar="SPEC",
                help="virtual (default), or serial:PORT[,profile=P][,id=ID][,stim=PORT,rig=FILE]; repeatable")
    g.addoption("--count", type=int, default=1, metavar="N", help="virtual devices per profile (default 1)")
    g.addoption("--bench-host", default=None, metavar="ADDR",
                help="address real boards reach this machine's site broker at (bench Wi-Fi)")
    g.addoption("--wifi-ssid", default="", help="bench Wi-Fi for real boards")
    g.addoption("--wifi-password", default="", help="bench Wi-Fi password for real boards")
    g.addoption("--bench-dir", default=None, type=Path, metavar="DIR",
                help="keep the bench's brokers, gateway and device consoles here (default: a temp dir)")
    g.addoption("--hil-json", default=None, type=Path, metavar="FILE",
                help="write the JSON report (outcomes, durations, latencies) here")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "hardware(reason): needs something only a real board has; skipped, "
                                       "with the reason, on virtual devices")
    config.addinivalue_line("markers", "profile(name): the device class the test's `dut` must be (default gas)")
    try:
        specs = [DeviceSpec.parse(text) for text in config.getoption("device")] or [DeviceSpec("virtual")]
    except ValueError as exc:
        raise pytest.UsageError(str(exc)) from None
    if config.getoption("count") < 1:
        raise pytest.UsageError("--count must be at least 1")
    config.stash[SPECS] = specs
    config.stash[PROFILES] = set()
    path = config.getoption("hil_json")
    if path is not None:
        config.pluginmanager.register(JsonReport(path), "lifeline_hil_json")


def _profile(item: pytest.Item) -> str:
    marker = item.get_closest_marker("profile")
    return str(marker.args[0]) if marker is not None and marker.args else DEFAULT_PROFILE


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip hardware tests on an all-virtual bench."""
    if not all(s.kind == "virtual" for s in config.stash[SPECS]):
        return
    for item in items:
        marker = item.get_closest_marker("hardware")
        if marker is not None:
            why = marker.args[0] if marker.args else marker.kwargs.get("reason", "real hardware")
            item.add_marker(pytest.mark.skip(reason=f"hardware: {why} (the bench has only virtual devices)"))


def pytest_collection_finish(session: pytest.Session) -> None:
    """The profiles a virtual bench needs: those of the selected tests that use it (and will run)."""
    for item in session.items:
        if item.get_closest_marker("skip") is None and BENCH_FIXTURES & set(getattr(item, "fixturenames", ())):
            session.config.stash[PROFILES].add(_profile(item))


def _terminal(config: pytest.Config) -> Callable[[str], None]:
    """A line on pytest's terminal at once, past its capture of the test's output."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    capture = config.pluginmanager.get_plugin("capturemanager")

    def say(line: str) -> None:
        if reporter is None:
            return
        with capture.global_and_fixture_disabled() if capture is not None else contextlib.nullcontext():
            reporter.ensure_newline()
            reporter.write_line(line)

    return say


@pytest.fixture(scope="session")
def testbed(request: pytest.FixtureRequest) -> Iterator[Testbed]:
    config = request.config
    profiles: set[str] = config.stash[PROFILES] or {DEFAULT_PROFILE}
    bench: Testbed | None = None
    try:
        bench = Testbed(config.stash[SPECS], config.getoption("count"), profiles, workdir=config.getoption("bench_dir"),
                      bench_host=config.getoption("bench_host"),
                      wifi=(config.getoption("wifi_ssid"), config.getoption("wifi_password")), say=_terminal(config))
        report = config.pluginmanager.get_plugin("lifeline_hil_json")
        if isinstance(report, JsonReport):
            report.devices = [{"id": d.id, "profile": d.profile, "kind": d.spec.kind, "port": d.spec.port}
                              for d in bench.devices]
        bench.start()
    except BaseException as exc:  # a Ctrl-C in setup too: the fixture never yields, so nothing else closes it
        if bench is not None:
            bench.close()
        if isinstance(exc, TestbedError):
            pytest.fail(f"bench setup: {exc}", pytrace=False)
        raise
    try:
        yield bench
    finally:
        bench.close()


@pytest.fixture
def site(testbed: Testbed) -> Site:
    return testbed.site


@pytest.fixture
def district(testbed: Testbed) -> District:
    return testbed.district()


@pytest.fixture
def dut(request: pytest.FixtureRequest, testbed: Testbed) -> Iterator[list[Dut]]:
    """The bench's devices of the test's profile, returned to quiet readings and a live network after it."""
    profile = _profile(request.node)
    hardware = request.node.get_closest_marker("hardware") is not None
    devices = testbed.for_profile(profile, hardware)
    if not devices:
        pytest.skip(f"no {'real ' if hardware else ''}{profile} device on this bench")
    yield devices
    for d in devices:
        d.quiet()


@pytest.fixture
def latency(request: pytest.FixtureRequest) -> LatencyLog:
    return LatencyLog(request.node)
