"""A release directory of `lifeline release build`, read and checked whole: the config check at start and the
relay that serves it read it the same way, so a directory the daemon accepted is one it can serve."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

SIGNATURE = 64  # bytes of an Ed25519 signature


class ReleaseDirError(ValueError):
    pass


@dataclass(frozen=True)
class ReleaseDir:
    version: str
    profiles: tuple[str, ...]
    manifest_len: int  # release.bin starts with the manifest
    signature: bytes
    data: bytes  # release.bin: what nodes download


def read(path: Path) -> ReleaseDir:
    """The release at `path`; ReleaseDirError says what is missing or does not belong together."""
    try:
        manifest = (path / "manifest.json").read_bytes()
        doc = json.loads(manifest)
        signature = (path / "manifest.sig").read_bytes()
        data = (path / "release.bin").read_bytes()
    except (OSError, ValueError) as exc:
        raise ReleaseDirError(f"{path} is not a release directory ({exc})") from None
    except RecursionError:  # nested past the parser's depth: hostile, or no manifest
        raise ReleaseDirError(f"{path} is not a release directory (nested too deeply to be a manifest)") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("version"), str) or not doc["version"]:
        raise ReleaseDirError(f"{path}: manifest.json names no version")
    profiles = doc.get("profiles")
    if not isinstance(profiles, list) or not all(isinstance(p, str) for p in profiles):
        raise ReleaseDirError(f"{path}: manifest.json's profiles are not a list of names")
    if len(signature) != SIGNATURE:
        raise ReleaseDirError(f"{path}: manifest.sig is {len(signature)} bytes, not an Ed25519 signature")
    if not data.startswith(manifest):
        raise ReleaseDirError(f"{path}: release.bin does not start with manifest.json")
    return ReleaseDir(doc["version"], tuple(profiles), len(manifest), signature, data)
