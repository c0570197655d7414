"""docs/firmware.md says which commands a node in safe mode takes: the same ops as app/commands.py's
_SAFE_OPS, in both places it says so."""

from __future__ import annotations

import ast
import re

from lifeline import upy

DOC = upy.ROOT / "docs" / "firmware.md"


def safe_ops() -> set[str]:
    tree = ast.parse((upy.FIRMWARE / "lib" / "app" / "commands.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and [t.id for t in node.targets if isinstance(t, ast.Name)] == ["_SAFE_OPS"]:
            value = node.value
            if isinstance(value, ast.Call):  # const((...))
                value = value.args[0]
            return set(ast.literal_eval(value))
    raise AssertionError("no _SAFE_OPS in app/commands.py")


def test_docs_list_the_ops_safe_mode_takes() -> None:
    text = " ".join(DOC.read_text().split())
    said = [m.group(1) for m in re.finditer(r"(?:takes only|Ops other than) ((?:`\w+`(?:, | and )?)+)", text)]
    assert len(said) == 2, said
    for ops in said:
        assert set(re.findall(r"`(\w+)`", ops)) == safe_ops(), (ops, safe_ops())
