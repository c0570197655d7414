"""Every annotated hex example in docs/protocol.md must be the exact encoding of the value it names."""

import re
from pathlib import Path

import pytest

from protocol import cbor, cbor_decode, message, senml

DOC = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"
BLOCK = re.compile(r"```cbor\n(.*?)```", re.S)


def examples() -> list[tuple[str, str]]:
    found = []
    for block in BLOCK.findall(DOC.read_text()):
        lines = block.splitlines()
        assert lines[0].startswith("# value: "), "an example must start with '# value: <expression>'"
        hex_text = "".join(line.split("#", 1)[0] for line in lines[1:])
        found.append((lines[0].removeprefix("# value: "), re.sub(r"\s+", "", hex_text)))
    return found


def test_the_doc_has_examples() -> None:
    assert len(examples()) >= 3


@pytest.mark.parametrize(("expression", "hex_text"), examples())
def test_example_matches_the_encoder(expression: str, hex_text: str) -> None:
    value = eval(expression, {"senml": senml, "message": message, "cbor": cbor, "cbor_decode": cbor_decode})
    encoded = value if isinstance(value, bytes) else cbor.dumps(value)
    assert bytes.fromhex(hex_text) == encoded, f"docs say {hex_text}, encoder gives {encoded.hex()}"
