"""The import direction of the tree (docs/architecture.md): protocol <- firmware, gateway <- district <-
lifeline <- hil_tests, bench, and nothing but tests imports tests. Inside lifeline/, the virtual-site kit is below the
demo that uses it. Read from the source with ast, so a late import inside a function counts too."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# What each folder may import from the repository's own top-level packages.
ALLOWED = {
    "protocol": {"protocol"},
    "firmware": {"protocol"},
    "gateway": {"protocol", "gateway"},
    "district": {"protocol", "gateway", "district"},
    "lifeline": {"protocol", "gateway", "district", "lifeline"},
    "hil_tests": {"protocol", "gateway", "district", "lifeline", "hil_tests"},
    "bench": {"protocol", "gateway", "district", "lifeline", "bench"},
}
OURS = {*ALLOWED, "tests"}


def imported(path: Path) -> set[str]:
    """Dotted names of the modules a file imports (relative imports are not used in this tree)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


def sources(folder: str) -> list[Path]:
    return sorted(p for p in (ROOT / folder).rglob("*.py") if "__pycache__" not in p.parts)


@pytest.mark.parametrize("folder", sorted(ALLOWED))
def test_no_folder_imports_a_higher_layer_or_tests(folder: str) -> None:
    wrong = [f"{p.relative_to(ROOT)} imports {name}" for p in sources(folder) for name in sorted(imported(p))
             if name.split(".")[0] in OURS and name.split(".")[0] not in ALLOWED[folder]]
    assert not wrong, "\n".join(wrong)


def test_the_virtual_site_kit_does_not_import_the_demo() -> None:
    wrong = [f"{p.relative_to(ROOT)} imports {name}" for p in sources("lifeline/virtual")
             for name in sorted(imported(p)) if name.startswith("lifeline.demo")]
    assert not wrong, "\n".join(wrong)


def test_the_check_sees_late_imports(tmp_path: Path) -> None:
    f = tmp_path / "late.py"
    f.write_text("import os\n\ndef f():\n    from tests.gateway import sitekit\n    import lifeline.virtual.site\n")
    assert {"tests.gateway", "tests.gateway.sitekit", "lifeline.virtual.site", "os"} <= imported(f)
