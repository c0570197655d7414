"""The boot (main.py), app/runtime.py and app/trial.py name ota's files and factory version as literals, so a
node that never took an update loads no ota module (docs/firmware.md, Memory); these must stay ota's."""

from __future__ import annotations

import ast
from pathlib import Path

from lifeline import upy

LIB = upy.FIRMWARE / "lib"


def _constants(path: Path) -> dict[str, object]:
    """Module-level NAME = literal (or const(literal)) assignments of a firmware source file."""
    out: dict[str, object] = {}
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            value = node.value
            if isinstance(value, ast.Call) and getattr(value.func, "id", None) == "const":
                value = value.args[0]
            if isinstance(value, ast.Constant):
                out[node.targets[0].id] = value.value
    return out


def _strings(path: Path) -> set[str]:
    return {n.value for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.Constant)
            and isinstance(n.value, str)}


def test_literals_are_otas() -> None:
    ota = _constants(LIB / "ota" / "__init__.py")
    assert _constants(LIB / "app" / "runtime.py")["_FW"] == ota["VERSION"]
    assert {ota["SLOT"], ota["STATE"]} <= _strings(upy.FIRMWARE / "main.py")
    assert {ota["SLOT"], ota["RESULT"]} <= _strings(LIB / "app" / "runtime.py")
    assert {ota["SLOT"], ota["RESULT"]} <= _strings(LIB / "app" / "trial.py")


def test_a_node_without_an_update_names_no_ota_module() -> None:
    """What loads at every boot imports ota only under a check for its files."""
    for path in (LIB / "app" / "runtime.py", LIB / "app" / "__init__.py"):
        tree = ast.parse(path.read_text())
        assert not any(isinstance(n, ast.Import | ast.ImportFrom) and "ota" in ast.unparse(n)
                       for n in ast.walk(tree)), path
