"""`lifeline release` given what an engineer gets wrong: a module that does not compile, a key under a
passphrase, an --out it cannot write. Each is one line and exit 2 (the compiler's own message for the module),
with nothing left behind; each ended in a traceback."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from lifeline import cli, release, upy

LIFELINE = str(Path(sys.executable).parent / "lifeline")


def tree(tmp_path: Path, **modules: str) -> Path:
    top = tmp_path / "src"
    top.mkdir()
    for name, text in modules.items():
        (top / f"{name}.py").write_text(text)
    return top


def test_a_module_that_does_not_compile_is_named_with_the_compilers_message(tmp_path: Path) -> None:
    """mpy-cross's complaint (file, line, what) is the engineer's next step; a CalledProcessError hid it."""
    src = tree(tmp_path, good="X = 1\n", sampler="def f(:\n")
    with pytest.raises(release.ReleaseError) as refused:
        release.build(Ed25519PrivateKey.generate(), "0.2.0", tmp_path / "out", lib=src, protocol=src)
    where = src / "sampler.py"
    assert str(refused.value) == f'mpy-cross {where}: File "{where}", line 1; SyntaxError: invalid syntax'
    assert not (tmp_path / "out").exists()


def test_an_out_that_is_a_file_is_refused_with_nothing_left(tmp_path: Path) -> None:
    src = tree(tmp_path, good="X = 1\n")
    (tmp_path / "releases").write_text("")
    with pytest.raises(release.ReleaseError, match=r"--out .*releases: cannot write the release \(File exists"):
        release.build(Ed25519PrivateKey.generate(), "0.2.0", tmp_path / "releases", lib=src, protocol=src)
    built = release.build(Ed25519PrivateKey.generate(), "0.2.0", tmp_path / "ok", lib=src, protocol=src)
    assert sorted(p.name for p in (tmp_path / "ok").iterdir()) == ["0.2.0"]  # no staging directory beside it
    assert sorted(p.name for p in built.dir.iterdir()) == ["manifest.json", "manifest.sig", "release.bin"]


@pytest.mark.parametrize("version", ["1.\u00b2", "\u0661.\u0662", "0.\uff12"])
def test_a_version_of_digits_a_node_cannot_read_is_refused(tmp_path: Path, version: str) -> None:
    """str.isdigit() takes a superscript two, Arabic-Indic and full-width digits for digits: such a version was
    built and signed, and every node refuses it (its int() reads ASCII digits alone: "not numbers and dots")."""
    src = tree(tmp_path, good="X = 1\n")
    with pytest.raises(release.ReleaseError, match="numbers and dots"):
        release.build(Ed25519PrivateKey.generate(), version, tmp_path / "out", lib=src, protocol=src)
    assert not (tmp_path / "out").exists()


def test_a_key_under_a_passphrase(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key = tmp_path / "district-release.key"
    key.write_bytes(Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.BestAvailableEncryption(b"pw")))
    assert cli.main(["release", "build", "--key", str(key), "--version", "0.2.0", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err == (f"lifeline release: --key {key}: encrypted with a passphrase; give it as keygen writes it "
                   "(PKCS#8 PEM, unencrypted, mode 0600)\n")


def test_keygen_into_a_directory_that_is_not_there(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "keys" / "district-release.key"
    assert cli.main(["release", "keygen", "--out", str(out)]) == 2
    assert capsys.readouterr().err == f"lifeline release: --out {out}: No such file or directory\n"


def test_keygen_on_a_full_disk_leaves_no_half_a_key(tmp_path: Path) -> None:
    """The key written short (a full disk; here a file size limit of 40 bytes, below the PEM's 119) ended in a
    traceback and left the short file under --out, which keygen then refused to replace ("exists") and
    `release build` could not read. Now: one line, exit 2, nothing under --out, and a second run writes it."""
    out = tmp_path / "district-release.key"

    def small_files() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG from write(), as ENOSPC would be
        resource.setrlimit(resource.RLIMIT_FSIZE, (40, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))

    full = subprocess.run([LIFELINE, "release", "keygen", "--out", str(out)], capture_output=True, text=True,
                          preexec_fn=small_files, env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    assert full.returncode == 2, full.stderr
    assert full.stderr.startswith(f"lifeline release: --out {out}: cannot write the key (File too large)"), full.stderr
    assert len(full.stderr.splitlines()) == 1 and not out.exists() and list(tmp_path.iterdir()) == []
    again = subprocess.run([LIFELINE, "release", "keygen", "--out", str(out)], capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    key = serialization.load_pem_private_key(out.read_bytes(), password=None)
    assert isinstance(key, Ed25519PrivateKey) and again.stdout.strip() == release.public_hex(key)
    assert out.stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize("min_heap", ["-65536", "0"])
def test_a_min_heap_that_is_no_heap(tmp_path: Path, capsys: pytest.CaptureFixture[str], min_heap: str) -> None:
    """--min-heap -65536 (or 0) was built and signed into the manifest, where a node's check (min_heap > its heap)
    can never refuse: a release meant to need a heap went to every node, and its version could not be built again
    with the right figure. Refused before anything is compiled or written."""
    key = tmp_path / "district-release.key"
    key.write_bytes(Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    out = tmp_path / "out"
    assert cli.main(["release", "build", "--key", str(key), "--version", "0.2.0", "--out", str(out), "--min-heap",
                     min_heap]) == 2
    assert capsys.readouterr().err == (f"lifeline release: --min-heap {min_heap}: the heap bytes a node needs, "
                                       "above 0\n")
    assert not out.exists()


def test_a_manifest_larger_than_a_node_can_hold_is_refused_at_the_build(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A node's `ota` command refuses a manifest over what its updater's heap holds (firmware/lib/app/commands.py
    _MANIFEST_MAX, measured): such a release was built and signed, and every node of a rollout refused it. The
    build says so first, with nothing left under --out, at the node's own limit (lowered here to what two small
    modules pass, rather than compiling the dozens a real limit takes)."""
    node = (upy.FIRMWARE / "lib/app/commands.py").read_text()
    assert f"_MANIFEST_MAX = const({release.MANIFEST_MAX})" in node
    src = tree(tmp_path, good="X = 1\n")
    whole = len(release.build(Ed25519PrivateKey.generate(), "0.1.0", tmp_path / "fits", lib=src, protocol=src).manifest)
    monkeypatch.setattr(release, "MANIFEST_MAX", whole - 1)
    with pytest.raises(release.ReleaseError, match=rf"manifest of {whole} bytes: a node holds {whole - 1} at most"):
        release.build(Ed25519PrivateKey.generate(), "0.2.0", tmp_path / "out", lib=src, protocol=src)
    assert not (tmp_path / "out").exists()
