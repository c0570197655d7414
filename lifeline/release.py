"""`lifeline release`: a signed firmware release for over-the-air updates (docs/ota.md).

    lifeline release keygen --out district-release.key
    lifeline release build --key district-release.key --version 0.2.0 --out releases/

`keygen` writes an Ed25519 private key (PKCS#8 PEM, mode 0600) and prints its public key in hex: that is
what goes into each node's device.json as "ota_key". The private key stays with the district; a site gateway
relays releases but holds no key and cannot make one.

`build` compiles firmware/lib and protocol/ to .mpy (as `lifeline flash` ships them) into
OUT/<version>/: manifest.json {version, profiles, files [{path, sha256, size}], min_heap, mpy}, its signature
manifest.sig (64 bytes), and release.bin, the bytes a gateway serves: the manifest, then every file in the
manifest's order. It prints the ota command's args.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from lifeline import upy

if TYPE_CHECKING:  # cryptography is the tools extra's: a site box reads releases (lifeline ota) without it
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

PROFILES = ("gas", "water", "drainage", "bridge", "rain", "drone")
MIN_HEAP = 65536  # bytes: the 64 KB heap every profile is held to (README, "Node heap")
MANIFEST_MAX = 8192  # bytes: the most a node's `ota` command takes (firmware/lib/app/commands.py, measured there)


class ReleaseError(Exception):
    pass


@dataclass
class Release:
    """A built release: where it is, its version, and what the ota command carries."""

    dir: Path
    version: str
    manifest: bytes
    signature: bytes

    def command_args(self) -> dict[str, object]:
        return {"v": self.version, "n": len(self.manifest), "sig": self.signature.hex()}


def keygen(out: Path) -> str:
    """Write a new private key to `out` (refusing to overwrite one); return the public key in hex."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    if os.path.lexists(out):  # False where it cannot look (a directory it may not enter): the write says why
        raise ReleaseError(f"{out} exists: a release key is never overwritten")
    # Written beside --out, flushed to disk, then linked into place (which, unlike a rename, never replaces a
    # file): a full disk or a power cut leaves no short key under --out that keygen would then refuse to
    # replace and `build` could not read, after its public half went into the nodes' device.json.
    try:
        fd, name = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")  # 0600
    except OSError as exc:
        raise ReleaseError(f"--out {out}: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(pem)
            fh.flush()
            os.fsync(fh.fileno())
        os.link(name, out)
    except FileExistsError:
        raise ReleaseError(f"{out} exists: a release key is never overwritten") from None
    except OSError as exc:
        raise ReleaseError(f"--out {out}: cannot write the key ({exc.strerror or exc}); nothing was left "
                           "there") from None
    finally:
        with contextlib.suppress(OSError):
            os.unlink(name)
    with contextlib.suppress(OSError):  # the link itself to disk; the key is in place whatever this says
        dir_fd = os.open(out.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    return public_hex(key)


def public_hex(key: Ed25519PrivateKey) -> str:
    from cryptography.hazmat.primitives import serialization

    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return raw.hex()


def load_key(path: Path) -> Ed25519PrivateKey:
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, UnsupportedAlgorithm) as exc:
        raise ReleaseError(f"--key {path}: {exc}") from None
    except TypeError:  # what cryptography raises for a key under a passphrase
        raise ReleaseError(f"--key {path}: encrypted with a passphrase; give it as keygen writes it (PKCS#8 PEM, "
                           "unencrypted, mode 0600)") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ReleaseError(f"--key {path}: not an Ed25519 key")
    return key


def _numeric(version: str) -> bool:
    """Numbers and dots, as a node reads a version (ota/fetch.py's _ver refuses anything else)."""
    return all(p.isascii() and p.isdigit() for p in version.split("."))  # ASCII: isdigit takes "²" too


def _version(text: str) -> str:
    if not _numeric(text):
        raise ReleaseError(f"--version {text!r}: numbers and dots (a node compares them as numbers)")
    return text


def build(key: Ed25519PrivateKey, version: str, out: Path, lib: Path = upy.FIRMWARE / "lib",
          protocol: Path = upy.ROOT / "protocol", profiles: tuple[str, ...] = PROFILES,
          min_heap: int = MIN_HEAP) -> Release:
    """Compile, list, sign and write one release; `lib` and `protocol` are the source trees."""
    unknown = sorted(set(profiles) - set(PROFILES))
    if unknown or not profiles:
        raise ReleaseError(f"--profile: {', '.join(unknown) or 'none given'} (profiles: {', '.join(PROFILES)})")
    if min_heap <= 0:  # signed in, a node's check (min_heap > its heap) could never refuse it
        raise ReleaseError(f"--min-heap {min_heap}: the heap bytes a node needs, above 0")
    target = out / _version(version)
    try:
        if target.exists():
            raise ReleaseError(f"{target} exists: a version is released once")
    except OSError as exc:  # a directory the operator may not enter: told before all is compiled
        raise ReleaseError(f"--out {out}: cannot write the release ({exc.strerror})") from None
    with tempfile.TemporaryDirectory() as tmp:
        files: list[tuple[str, bytes]] = []
        for source_dir, prefix in ((lib, ""), (protocol, "protocol/")):
            for source in sorted(source_dir.rglob("*.py")):
                rel = prefix + source.relative_to(source_dir).with_suffix(".mpy").as_posix()
                try:
                    mpy = upy.compile_module(source, Path(tmp) / rel, upy.module_name(Path(rel)))
                except subprocess.CalledProcessError as exc:
                    raise ReleaseError(f"mpy-cross {source}: {upy.compile_error(exc)}") from None
                except upy.ToolMissing as exc:
                    raise ReleaseError(str(exc)) from None
                files.append((rel, mpy.read_bytes()))
    manifest = json.dumps({
        "version": version, "profiles": list(profiles), "min_heap": min_heap,
        "mpy": files[0][1][1],  # the .mpy version (header byte 1): a node whose MicroPython loads another refuses it
        "files": [{"path": p, "sha256": hashlib.sha256(b).hexdigest(), "size": len(b)} for p, b in files],
    }, separators=(",", ":"), sort_keys=True).encode()
    if len(manifest) > MANIFEST_MAX:  # signed and served, it was refused by every node of a rollout
        raise ReleaseError(f"manifest of {len(manifest)} bytes: a node holds {MANIFEST_MAX} at most; fewer or "
                           "shorter-named files")
    signature = key.sign(manifest)
    try:
        out.mkdir(parents=True, exist_ok=True)
        # Written beside the target and renamed into place whole: a run that fails midway leaves no half a
        # release under the version's name, which the gateway would refuse and a rebuild could not replace.
        with tempfile.TemporaryDirectory(dir=out, prefix=f".{version}.") as tmp:
            staged = Path(tmp) / version
            staged.mkdir()
            (staged / "manifest.json").write_bytes(manifest)
            (staged / "manifest.sig").write_bytes(signature)
            (staged / "release.bin").write_bytes(manifest + b"".join(b for _, b in files))
            staged.rename(target)
    except OSError as exc:
        raise ReleaseError(f"--out {out}: cannot write the release ({exc.strerror})") from None
    return Release(target, version, manifest, signature)


def load(release_dir: Path) -> Release:
    """A built release read back (what `lifeline ota` takes), checked as the gateway checks what it serves."""
    from gateway.release_dir import ReleaseDirError, read

    try:
        found = read(release_dir)
    except ReleaseDirError as exc:
        raise ReleaseError(str(exc)) from None
    if not _numeric(found.version):  # a hand-made one: `build` makes none such
        raise ReleaseError(f"{release_dir}: version {found.version!r} is not numbers and dots: every node refuses it")
    return Release(release_dir, found.version, found.data[:found.manifest_len], found.signature)


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", required=True)
    k = sub.add_parser("keygen", help="a new release key (keep it at the district)")
    k.add_argument("--out", type=Path, required=True, help="private key file to write (PEM)")
    b = sub.add_parser("build", help="build and sign a release")
    b.add_argument("--key", type=Path, required=True, help="the release private key (PEM)")
    b.add_argument("--version", required=True, help="numbers and dots, above every version it replaces")
    b.add_argument("--out", type=Path, required=True, help="directory that gets <version>/")
    b.add_argument("--profile", action="append", choices=PROFILES, help="a profile it is for (default: all)")
    b.add_argument("--min-heap", type=int, default=MIN_HEAP, help="heap bytes a node needs to take it")


def run(args: argparse.Namespace) -> int:
    try:
        if args.action == "keygen":
            print(keygen(args.out))
            return 0
        rel = build(load_key(args.key), args.version, args.out, profiles=tuple(args.profile or PROFILES),
                    min_heap=args.min_heap)
    except ReleaseError as exc:
        print(f"lifeline release: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({"dir": str(rel.dir), "ota": rel.command_args()}))
    return 0
