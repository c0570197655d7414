"""Proves protocol/ runs unchanged on MicroPython: each shared test module runs again under the real
unix port with a device-sized heap, and every test function that pytest sees must pass there too.

Like a flashed board, the interpreter gets protocol/ (and the test modules) as .mpy from mpy-cross:
compiling from source needs more heap than a device has, and a device never does it."""

import importlib
import re
from pathlib import Path

import pytest

from lifeline import upy

HERE = Path(__file__).parent
VECTORS = HERE / "rfc8949_appendix_a.json"
SHARED = ["test_cbor", "test_senml", "test_topics", "test_auth", "test_message"]


@pytest.fixture(scope="module")
def mpy_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("mpy")
    upy.compile_package(upy.ROOT / "protocol", out)
    for source in HERE.glob("*.py"):
        if source.stem in SHARED or source.stem in ("prototest", "upy_runner"):
            upy.compile_module(source, out / source.with_suffix(".mpy").name)
    return out


@pytest.mark.parametrize("module_name", SHARED)
def test_module_passes_under_micropython(module_name: str, mpy_dir: Path) -> None:
    module = importlib.import_module(module_name)
    expected = {n for n in dir(module) if n.startswith("test_")}
    assert expected, f"{module_name} has no tests"
    result = upy.run("-m upy_runner", module_name, cwd=HERE,
                     env={"MICROPYPATH": f"{mpy_dir}:.frozen", "LIFELINE_VECTORS": str(VECTORS)})
    passed = set(re.findall(rf"^PASS {module_name}\.(\w+)$", result.stdout, re.M))
    failures = [line for line in result.stdout.splitlines() if line.startswith("FAIL")]
    assert not failures, "\n".join(failures) + "\n" + result.stdout[-3000:] + result.stderr[-2000:]
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert passed == expected, f"not run under MicroPython: {sorted(expected - passed)}"


def test_checking_an_id_interns_none_of_its_characters(mpy_dir: Path, tmp_path: Path) -> None:
    """Iterating a str interns each character on MicroPython, so a node checking its site and device ids
    (at every topic it builds) interned the letters and digits of its ids: the demo's drone, at yongchuan-3,
    took y, o, g, 3 and 0 that way, one name past the 620 line (docs/firmware.md, "The name line again")."""
    script = tmp_path / "ids.py"
    script.write_text("import micropython\nfrom protocol import topics\nmicropython.qstr_info()\n"
                      "topics.device('zq9-vj7', 'kx8_w5', topics.DATA)\nmicropython.qstr_info()\n")
    result = upy.run(script, env={"MICROPYPATH": f"{mpy_dir}:.frozen"})
    counts = re.findall(r"n_qstr=(\d+)", result.stdout)
    assert result.returncode == 0 and len(counts) == 2, result.stdout + result.stderr
    assert counts[0] == counts[1], f"names interned by checking two ids: {counts}"
