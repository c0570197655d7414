"""`lifeline flash`: put the firmware and one device's identity on a board over its serial port.

The firmware is cross-compiled with mpy-cross (a 64K heap cannot compile the larger modules, and a
device never should), staged in the flash layout of docs/firmware.md (firmware/lib and protocol/ hold only
what a board imports; the simulator, firmware/sim/, is never staged), and copied over the raw REPL with
mpremote's transport (the same pyserial path the bench uses). Each file goes to a temporary name, is
checked by SHA-256 on the device and only then renamed into place, so an interrupted run never leaves a
half-written module behind. Files already on the board with the right hash are left alone, and stale
modules under lib/ are removed (a stale .py would shadow a new .mpy). The board is soft-reset at the raw
REPL first, as mpremote does, so the copy runs with a fresh heap and without the firmware (--resume skips
that). A virtual device's pty works as the port (lifeline/virtual/device.py emulates that soft reset).

With --romfs the modules go into the board's ROMFS partition instead of lib/ (a MicroPython build with
ROMFS; docs/firmware.md, "ROMFS"): the staged lib/ is built into an image with mpremote's builder and
deployed with `mpremote romfs deploy`, after which lib/ on the filesystem is emptied, so nothing shadows
the image. A board whose MicroPython has no ROMFS is refused before anything is written.

Without --key the device keeps the key recorded for it in the registry, or gets a fresh random one.
The registry is a TOML fragment of gateway `[[devices]]` tables, so flashing a batch of nodes also
yields the gateway's device list.

Exit status: 0 flashed, 1 a board or port that failed, 2 a usage error (UsageError: an option or a file it
names), as argparse and the other tools use it.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import datetime
import fcntl
import functools
import hashlib
import ipaddress
import json
import math
import os
import re
import secrets
import shutil
import ssl
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lifeline import signals, upy
from lifeline.private_file import write_private

PROTOCOL = upy.ROOT / "protocol"
BROKER_CA = "broker_ca.der"  # the CA the node verifies its broker against (firmware/lib/app/__init__.py tls)
PROFILES = ("gas", "water", "drainage", "bridge", "rain", "drone")
KEY_BYTES = 32
# The node's identity and settings: written whole as NAME.new first and put in place together, so a run stopped
# between two of them never leaves the board one flash's device.json beside another's secrets.json.
CONFIG = (BROKER_CA, "profile.json", "device.json", "secrets.json")
CHECKED_STAMP = "checked.json"  # firmware/lib/app/checked.py: removed so new firmware checks the config
# firmware/lib/app/trial.py: a config command on trial keeps the files it replaced as NAME.prev (or stages its own
# as NAME.new) and puts the .prev back at a boot without a connection: a flash's reset undid the flash.
CONFIG_TRIAL = "trial.json"
# firmware/lib/ota: the release a node took runs from ota/a or ota/b while slot.json names it, and one pending
# (ota.json) boots the updater; either way lib/ does not run. A flash by cable makes lib/ the code again.
OTA_STATE = ("ota.json", "slot.json")
READ_TIMEOUT = 1.0  # s per serial read: mpremote retries empty reads until its own deadlines
CHUNK = 512  # bytes per raw-REPL write: a 512-byte literal compiles comfortably within a 64K heap
_ID = re.compile(r"[a-z0-9_-]{1,32}\Z")
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+\Z")  # a TOML key written without quotes
_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\Z")  # one label of a DNS name (RFC 1123)
# Default flash offset of a MicroPython image by chip family (MicroPython's ESP32 download pages).
IMAGE_OFFSETS = {"esp32": "0x1000", "esp32s2": "0x1000", "esp32s3": "0x0", "esp32c3": "0x0",
                 "esp32c6": "0x0"}


class FlashError(Exception):
    """A flashing step failed; the message says which step and what to do. Exit status 1."""


class UsageError(FlashError):
    """An option, or a file an option names (key, image, registry), cannot be used; nothing was written to the
    board. Exit status 2, as for the options argparse refuses and the other tools' usage errors."""


@dataclass(frozen=True)
class Provision:
    """One device's identity and connection settings, as written to device.json and secrets.json."""

    device_id: str
    site: str
    profile: str
    broker_host: str
    broker_port: int
    key: bytes = field(repr=False)
    mqtt_user: str | None = None
    mqtt_password: str | None = field(default=None, repr=False)
    wifi_ssid: str = ""
    wifi_password: str = field(default="", repr=False)
    ca: bytes | None = field(default=None, repr=False)  # DER: TLS on, the broker verified against this CA
    ntp: tuple[str, ...] = ("pool.ntp.org",)

    def device_json(self) -> dict[str, Any]:
        return {"id": self.device_id, "site": self.site, "profile": self.profile,
                "broker": {"host": self.broker_host, "port": self.broker_port, "user": self.mqtt_user,
                           "tls": self.ca is not None},
                "ntp": list(self.ntp)}

    def secrets_json(self) -> dict[str, Any]:
        return {"wifi": {"ssid": self.wifi_ssid, "password": self.wifi_password},
                "mqtt_password": self.mqtt_password, "key": self.key.hex()}


@dataclass(frozen=True)
class Staged:
    """One file as it will sit on the board: `path` is relative to the flash root."""

    path: str
    source: Path
    size: int
    sha256: bytes


@dataclass
class FlashResult:
    written: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    bytes_written: int = 0
    seconds: float = 0.0


# staging


def _staged(path: str, source: Path) -> Staged:
    data = source.read_bytes()
    return Staged(path, source, len(data), hashlib.sha256(data).digest())


def stage(provision: Provision, out: Path, firmware: Path = upy.FIRMWARE, protocol: Path = PROTOCOL,
          compile_mpy: bool = True) -> list[Staged]:
    """Build the device's flash image in `out`: boot.py and main.py as source (a board compiles those
    itself), lib/ and lib/protocol/ as .mpy (or .py with compile_mpy=False), the profile and the two
    per-device files. Returns the files in copy order: code first, config last, so a board that loses
    power mid-flash does not start with a new identity on old code."""
    profile_src = firmware / "profiles" / f"{provision.profile}.json"
    if not profile_src.is_file():
        known = sorted(p.stem for p in (firmware / "profiles").glob("*.json"))
        raise FlashError(f"--profile: no {profile_src} (profiles: {', '.join(known) or 'none'})")
    files: list[Staged] = []
    for name in ("boot.py", "main.py"):
        if not (firmware / name).is_file():
            raise FlashError(f"firmware: {firmware / name} is missing")
        shutil.copyfile(firmware / name, out / name)
        files.append(_staged(name, out / name))
    for package_dir, prefix in ((firmware / "lib", "lib"), (protocol, "lib/protocol")):
        for source in sorted(package_dir.rglob("*.py")):
            rel = source.relative_to(package_dir)
            if "__pycache__" in rel.parts:
                continue
            target = out / prefix / rel
            if compile_mpy:
                target = target.with_suffix(".mpy")
                try:
                    upy.compile_module(source, target, upy.module_name(target.relative_to(out / "lib")))
                except subprocess.CalledProcessError as exc:
                    raise FlashError(f"mpy-cross {source}: {upy.compile_error(exc)}") from None
                except upy.ToolMissing as exc:
                    raise FlashError(str(exc)) from None
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source, target)
            files.append(_staged(target.relative_to(out).as_posix(), target))
    profile = json.loads(profile_src.read_text())
    if provision.ca is not None:  # before device.json, which turns TLS on
        (out / BROKER_CA).write_bytes(provision.ca)
        files.append(_staged(BROKER_CA, out / BROKER_CA))
    for name, content in (("profile.json", profile), ("device.json", provision.device_json()),
                          ("secrets.json", provision.secrets_json())):
        (out / name).write_text(json.dumps(content, separators=(",", ":")))
        files.append(_staged(name, out / name))
    return files


def romfs_of(files: list[Staged], out: Path) -> Path:
    """The staged lib/ as a ROMFS image in `out`: a board built with ROMFS mounts it at /rom and imports
    from /rom/lib in place, so the code's bytecode and strings stay in flash, out of the heap."""
    image = out / "firmware.romfs"
    image.write_bytes(upy.romfs_image({f.path: f.source for f in files if f.path.startswith("lib/")}))
    return image


def _child(argv: list[str]) -> int:
    """Run a tool on the board (esptool, mpremote) to its end; stopped with this command whenever that comes,
    its start included (lifeline/signals.py): left running, it held the board's port."""
    proc = None
    try:
        with signals.held():  # a stop noted while Popen starts it is raised as the hold ends: proc is set by then
            proc = subprocess.Popen(argv)
        return proc.wait()
    except BaseException:
        if proc is not None:
            proc.kill()
            proc.wait()
        raise


def deploy_romfs(port: str, image: Path) -> None:
    """Write the image to the board's first ROMFS partition with mpremote (which shows its progress)."""
    argv = [sys.executable, "-m", "mpremote", "connect", port, "romfs", "deploy", str(image)]
    if _child(argv) != 0:
        raise FlashError(f"mpremote romfs deploy failed on {port} (command: {' '.join(argv)})")


# the board


class Repl:
    """The raw REPL of a MicroPython board on a serial port: what flashing drives (the node's own hardware is
    the HAL's Board)."""

    def __init__(self, port: str, baud: int = 115200, connect_timeout: float = 10.0,
                 soft_reset: bool = True) -> None:
        from mpremote.transport import TransportError
        from mpremote.transport_serial import SerialTransport

        self.port = port
        self._error = TransportError
        try:
            # A read timeout, or mpremote blocks forever on a silent pty (it reads those unconditionally).
            self.t = SerialTransport(port, baudrate=baud, timeout=READ_TIMEOUT)
        except TransportError as exc:
            raise FlashError(f"{port}: cannot open ({exc}); is another program using it?") from None
        try:
            self.t.enter_raw_repl(soft_reset=soft_reset, timeout_overall=connect_timeout)
        except TransportError as exc:
            self.t.close()
            raise FlashError(f"{port}: no MicroPython raw REPL ({exc}); is MicroPython on the board "
                             "(--image writes it)?") from None
        # Paths are relative to the flash root: a board's is "/", a virtual device's its directory.
        self.exec("import os, sys\nif sys.platform != 'linux': os.chdir('/')")

    def exec(self, code: str) -> bytes:
        try:
            out: bytes = self.t.exec(code)
        except self._error as exc:
            raise FlashError(f"{self.port}: the board failed running {code.splitlines()[0]!r}: "
                             f"{str(exc).strip()}") from None
        except OSError as exc:  # pyserial's SerialException: the port went away
            raise _lost(self.port, exc) from None
        return out

    def sha256(self, path: str) -> bytes | None:
        """The hash of a file on the board, or None when it does not exist (or the board cannot read it)."""
        try:
            digest: bytes = self.t.fs_hashfile(path, "sha256")
        except OSError:
            # mpremote raises the board's error as an OSError, and pyserial a lost port as one too: a port that
            # went away is told as such (exec raises it), not taken for a missing file
            self.exec("pass")
            return None
        return digest

    def makedirs(self, path: str) -> None:
        parts = path.split("/")
        for i in range(1, len(parts) + 1):
            sub = "/".join(parts[:i])
            self.exec(f"try:\n os.mkdir({sub!r})\nexcept OSError:\n pass")

    def write(self, path: str, data: bytes, progress: Callable[[int], None], rename: bool = True) -> None:
        """Write `path` as path.new and check it on the board; then rename it into place, unless not `rename`
        (the caller puts it in place with others: rename_all)."""
        tmp = path + ".new"
        sent = 0

        def step(done: int, total: int) -> None:
            nonlocal sent
            progress(done - sent)
            sent = done

        try:
            self.t.fs_writefile(tmp, data, chunk_size=CHUNK, progress_callback=step)
        except (OSError, self._error) as exc:
            raise FlashError(f"{self.port}: writing {path} failed ({exc}); is the board still connected, is its "
                             "flash full? Files already copied are kept: run it again") from None
        got = self.sha256(tmp)
        if got != hashlib.sha256(data).digest():
            raise FlashError(f"{self.port}: {path} did not verify after writing "
                             f"(board sha256 {got.hex() if got else 'missing'})")
        if rename:
            self.rename_all([path])

    def rename_all(self, paths: list[str]) -> None:
        """Each written path.new into place, in one exec on the board: no serial transfer between them."""
        if paths:
            self.exec(f"for _p in {paths!r}:\n os.rename(_p + '.new', _p)")

    def files_under(self, top: str) -> list[bytes]:
        """Every file below a directory on the board (none when it does not exist), its path as the bytes of
        the board's name: a littlefs name need not be UTF-8, and listed as text one raised UnicodeError on the
        board. A bytes path lists bytes names, and their repr is ASCII."""
        listing = self.exec(
            "def _walk(p, out):\n"
            " for e in os.ilistdir(p):\n"
            "  q = p + b'/' + e[0]\n"
            "  _walk(q, out) if e[1] & 0x4000 else out.append(q)\n"
            "_found = []\n"
            "try:\n"
            f" _walk({top.encode()!r}, _found)\n"
            "except OSError:\n"
            " pass\n"
            "print(repr(_found))")
        found: list[bytes] = ast.literal_eval(listing.decode().strip())
        return found

    def check_loads(self, files: list[Staged]) -> None:
        """Refuse .mpy files of a version this board's MicroPython does not load: each would be copied and
        verified, and the board fail to import its firmware at every boot. The version is the header's second
        byte; bytecode alone (no native code) loads on any port of that version."""
        made = {f.source.read_bytes()[1] for f in files if f.path.endswith(".mpy")}
        if not made:
            return
        loads = self.exec("import sys\nprint(getattr(sys.implementation, '_mpy', 0) & 0xff)").strip().decode()
        if made != {int(loads)}:
            what = f".mpy version {loads}" if loads != "0" else "no .mpy files"  # a port built without them
            raise FlashError(f"{self.port}: its MicroPython loads {what}; mpy-cross wrote version "
                             f"{', '.join(map(str, sorted(made)))}: write a MicroPython of that version (--image) "
                             "or install the mpy-cross of the board's")

    def has_romfs(self) -> bool:
        """Whether the board's MicroPython was built with a ROMFS partition (as `mpremote romfs query` asks)."""
        return self.exec("import vfs\nprint(hasattr(vfs, 'rom_ioctl') and vfs.rom_ioctl(1) > 0)").strip() == b"True"

    def remove_present(self, paths: list[str]) -> list[str]:
        """Remove those of `paths` the board has, in one exec; the ones it had."""
        out = self.exec(f"_gone = []\nfor _p in {paths!r}:\n try:\n  os.remove(_p)\n  _gone.append(_p)\n"
                        " except OSError:\n  pass\nprint(repr(_gone))")
        gone: list[str] = ast.literal_eval(out.decode().strip())
        return gone

    def remove(self, path: str | bytes) -> None:
        self.exec(f"os.remove({path!r})")  # MicroPython takes a bytes path as its name's bytes

    def reboot(self) -> None:
        """Leave the raw REPL and soft-reset (Ctrl-D at the friendly REPL): the board runs boot.py and
        main.py; the unix port exits instead and its supervisor boots it again."""
        try:
            self.t.exit_raw_repl()
            time.sleep(0.1)
            self.t.serial.write(b"\x04")
            self.t.serial.flush()
        except OSError as exc:
            raise _lost(self.port, exc) from None

    def close(self) -> None:
        """Let the port go; on a port that is gone, quietly: the error that ended the run is the one to tell."""
        with contextlib.suppress(OSError, self._error):
            if self.t.in_raw_repl:
                self.t.exit_raw_repl()
        with contextlib.suppress(OSError):
            self.t.close()


def _lost(port: str, exc: OSError) -> FlashError:
    return FlashError(f"{port}: the serial link failed ({exc}); is the board still connected? Files already "
                      "copied are kept: run it again")


@contextmanager
def board(port: str, baud: int = 115200, connect_timeout: float = 10.0,
          soft_reset: bool = True) -> Iterator[Repl]:
    b = Repl(port, baud, connect_timeout, soft_reset)
    try:
        yield b
    finally:
        b.close()


def upload(b: Repl, files: list[Staged], progress: Callable[[int, Staged | None], None] | None = None,
           force: bool = False, new_code: bool = False) -> FlashResult:
    """Copy staged files that differ, verify each, then remove files under lib/ that the image does not
    hold. `progress(nbytes, file)` gets the bytes sent; it is called with file=None when a file is done.
    new_code: the code went to the board another way (--romfs), so its config is checked again too."""
    result = FlashResult()
    start = time.monotonic()
    report = progress or (lambda n, f: None)
    b.check_loads(files)
    for d in sorted({f.path.rsplit("/", 1)[0] for f in files if "/" in f.path}):
        b.makedirs(d)
    # The stamp of the config last checked goes before anything new is in place: a run stopped after its last
    # write, run again, writes nothing, and the new code would read the config unchecked.
    stamped = [CHECKED_STAMP] if b.sha256(CHECKED_STAMP) is not None else []

    def unstamp() -> None:
        for path in stamped:
            b.remove(path)
        result.removed += stamped
        stamped.clear()

    if new_code:
        unstamp()
    config = []  # written and checked, put in place together after the last
    for f in files:
        if not force and b.sha256(f.path) == f.sha256:
            result.unchanged.append(f.path)
            report(f.size, f)
        else:
            unstamp()
            b.write(f.path, f.source.read_bytes(), functools.partial(_sent, report, f), rename=f.path not in CONFIG)
            config += [f.path] if f.path in CONFIG else []
            result.written.append(f.path)
            result.bytes_written += f.size
        report(0, None)
    # The flash ends a config trial: first its mark, so no boot rolls back onto the files it kept
    result.removed += b.remove_present([CONFIG_TRIAL])
    b.rename_all(config)
    result.removed += b.remove_present([name + end for name in CONFIG[1:] for end in (".prev", ".new")])
    keep = {f.path.encode() for f in files}
    for path in b.files_under("lib"):
        if path not in keep:
            b.remove(path)
            result.removed.append(path.decode(errors="backslashreplace"))  # a name not UTF-8 shown escaped
    # last: until the code is all in, the board keeps running its release
    result.removed += b.remove_present(list(OTA_STATE))
    result.seconds = time.monotonic() - start
    return result


def _sent(report: Callable[[int, Staged | None], None], f: Staged, nbytes: int) -> None:
    report(nbytes, f)


# the image and the registry


def write_image(port: str, image: Path, chip: str, offset: str | None, erase: bool, baud: int) -> None:
    """Write a MicroPython image with esptool (erasing first on request), then wait for its REPL."""
    argv = [sys.executable, "-m", "esptool", "--chip", chip, "--port", port, "--baud", str(baud),
            "write_flash", *(["--erase-all"] if erase else []), offset or IMAGE_OFFSETS.get(chip, "0x0"),
            str(image)]
    if _child(argv) != 0:
        raise FlashError(f"esptool failed writing {image} to {port} (command: {' '.join(argv)}); hold BOOT "
                         "while resetting the board if it does not enter its bootloader")


def read_registry(path: Path) -> list[dict[str, Any]]:
    try:
        data = tomllib.loads(path.read_bytes().decode())  # UTF-8, as TOML is, whatever the locale
    except FileNotFoundError:
        return []
    except OSError as exc:  # a directory the operator may not enter, too: Path.exists raised there
        raise UsageError(f"registry {path}: cannot read it ({exc.strerror})") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"registry {path}: not valid TOML ({exc})") from None
    except RecursionError:  # nested past the parser's stack
        raise UsageError(f"registry {path}: not valid TOML (nested deeper than it reads)") from None
    others = sorted(set(data) - {"devices"})
    if others:  # a site.toml, say: rewritten as a device list, it would lose everything else it holds
        raise UsageError(f"registry {path}: holds {', '.join(others)} beside [[devices]], so it is no registry of "
                         "`lifeline flash` (a site.toml?); give --registry a file of its own")
    devices = data.get("devices", [])
    if not isinstance(devices, list) or not all(isinstance(d, dict) for d in devices):
        raise UsageError(f"registry {path}: devices must be [[devices]] tables")
    ids = [d.get("id") for d in devices]
    for i, dev_id in enumerate(ids):
        if dev_id in ids[:i]:  # which one would be the device's key?
            raise UsageError(f"registry {path}: devices[{i}]: device {dev_id!r} is also devices[{ids.index(dev_id)}]")
    return devices


def _toml_string(text: str) -> str:
    """`text` as a TOML basic string in ASCII: every character outside printable ASCII as its code point,
    which TOML reads back as that character. (JSON's escapes are not TOML's: a character past U+FFFF is a
    surrogate pair there, which TOML refuses.)"""
    out = []
    for ch in text:
        c = ord(ch)
        if ch in '"\\':
            out.append("\\" + ch)
        elif 0x20 <= c < 0x7F:
            out.append(ch)
        else:
            out.append(f"\\u{c:04X}" if c <= 0xFFFF else f"\\U{c:08X}")
    return '"' + "".join(out) + '"'


def _toml_key(key: str) -> str:
    return key if _BARE_KEY.match(key) else _toml_string(key)


def _toml_value(v: Any) -> str:
    """A value read from the registry as the same TOML value, so that rewriting it changes only the device
    recorded: a table (a dotted key, an array of tables) inline, a date or time as TOML's own."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)  # inf and nan are TOML's words too
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_toml_key(k)} = {_toml_value(x)}" for k, x in v.items()) + "}"
    if isinstance(v, datetime.date | datetime.time):  # a datetime is a date
        return v.isoformat()
    return _toml_string(str(v))


@contextmanager
def _registry_lock(path: Path) -> Iterator[None]:
    """The registry to this run alone while it reads, changes and writes it: runs flashing boards on other ports
    at the same time wait here, so none writes over a device another has just added. The lock is a file of its
    own beside the registry (the registry itself is replaced by a rename on each write), left in place."""
    lock = path.with_name(f".{path.name}.lock")
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise UsageError(f"registry {path}: cannot write it ({exc.strerror}); the board was not written") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def record(path: Path, site: str, device_id: str, profile: str, key: bytes) -> str:
    """Add or update a device in the registry; returns "added", "updated" or "unchanged"."""
    with _registry_lock(path):
        return _record(path, site, device_id, profile, key)


def _record(path: Path, site: str, device_id: str, profile: str, key: bytes) -> str:
    devices = read_registry(path)
    entry = {"id": device_id, "class": profile, "key": key.hex()}
    status = "added"
    for i, d in enumerate(devices):
        if d.get("id") == device_id:
            if all(d.get(k) == v for k, v in entry.items()):
                return "unchanged"
            devices[i] = {**d, **entry}
            status = "updated"
            break
    else:
        devices.append(entry)
    lines = [f"# Devices flashed for site {site!r} by `lifeline flash`: paste into site.toml.",
             "# It holds HMAC keys: keep it as secret as the gateway's config."]
    for d in devices:
        lines += ["", "[[devices]]"] + [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in d.items()]
    try:
        write_private(path, "\n".join(lines) + "\n")
    except OSError as exc:
        raise UsageError(f"registry {path}: cannot write it ({exc.strerror}); the board was not written") from None
    return status


def read_ca(path: Path) -> bytes:
    """The CA certificate of --tls, a PEM file of one certificate, as the DER the node loads (app.tls)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"--tls: cannot read {path} ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise UsageError(f"--tls {path}: not a PEM file (a DER certificate? convert it with "
                         "`openssl x509 -inform der -in CA -out CA.pem`)") from None
    found = re.findall(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", text, re.S)
    if len(found) != 1:
        raise UsageError(f"--tls {path}: {len(found)} PEM certificates in it; give the one CA certificate that "
                         "signed the site broker's (deploy/mosquitto/site.conf: certfile)")
    try:
        ssl.create_default_context(cadata=found[0])
        return ssl.PEM_cert_to_DER_cert(found[0])
    except (ssl.SSLError, ValueError) as exc:
        raise UsageError(f"--tls {path}: not a certificate ({exc})") from None


def resolve_key(args: argparse.Namespace, registry: Path | None) -> tuple[bytes, str]:
    """The device key and where it came from: --key, --key-file, the registry, or fresh."""
    text, source = None, ""
    if args.key is not None:
        text, source = args.key, "--key"
    elif args.key_file is not None:
        try:
            text, source = Path(args.key_file).read_text().strip(), str(args.key_file)
        except OSError as exc:
            raise UsageError(f"--key-file: cannot read {args.key_file} ({exc.strerror})") from None
        except UnicodeDecodeError:  # the key's raw bytes, say
            raise UsageError(f"--key-file {args.key_file}: not text; it holds the key in hex") from None
    elif registry is not None:
        for d in read_registry(registry):
            if d.get("id") == args.device_id and isinstance(d.get("key"), str):
                text, source = d["key"], f"registry {registry}"
    if text is None:
        return secrets.token_bytes(KEY_BYTES), "generated"
    try:
        key = bytes.fromhex(text)
    except ValueError:
        raise UsageError(f"{source}: the key must be hex") from None
    if len(key) != KEY_BYTES:
        raise UsageError(f"{source}: the key must be {KEY_BYTES} bytes ({2 * KEY_BYTES} hex digits), "
                         f"not {len(key)}")
    return key, source


# command line


def _host_port(text: str) -> tuple[str, int]:
    """HOST:PORT where HOST is one a board can look up or use: an IP address (IPv6 in brackets) or a DNS name.
    Any text was taken (an empty "[]", a space, 192.168.10.256) and the board tried it at every boot, for ever."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isascii() or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT")
    bracketed = host.startswith("[") and host.endswith("]")
    if bracketed != (":" in host):
        raise argparse.ArgumentTypeError(f"{text!r}: an IPv6 address goes in brackets, [fe80::1]:1883, and only it")
    return check_host(host[1:-1] if bracketed else host), int(port)


def check_host(text: str) -> str:
    """An IP address or a DNS name (RFC 1123 labels; a dotted quad past 255 is neither)."""
    try:
        ipaddress.ip_address(text)
        return text
    except ValueError:
        pass
    labels = text.removesuffix(".").split(".")
    if len(text) > 253 or not all(_LABEL.match(label) for label in labels) or labels[-1].isdigit():
        raise argparse.ArgumentTypeError(f"{text!r}: no IP address or DNS name")
    return text


def broker_user(device_id: str, given: str | None) -> str:
    """The node's user name on the site broker: its device id, the only one whose topics the shipped ACL
    (deploy/mosquitto/site.acl, keyed on the user name) lets it publish. The broker acknowledges a publish the
    ACL refuses and drops it, so a node under another login had its queue confirmed and lost every reading."""
    if given is not None and given != device_id:
        raise UsageError(f"--mqtt-user {given!r}: the site broker's ACL gives a node only the topics of its own user "
                         f"name, so it must be the device id ({device_id}); leave it out")
    return device_id


def _ident(text: str) -> str:
    if not _ID.match(text):
        raise argparse.ArgumentTypeError(f"{text!r}: use 1-32 characters of a-z 0-9 _ -")
    return text


def _rate(text: str) -> int:
    """A baud rate: a whole number above 0 (pyserial raised ValueError, a traceback, on a negative one)."""
    try:
        rate = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if rate <= 0:
        raise argparse.ArgumentTypeError(f"{rate}: a baud rate above 0")
    return rate


def _seconds(text: str) -> float:
    """A wait: finite and above 0. mpremote's deadline is never passed at nan or inf, and -1 gives up at the
    board's first pause."""
    try:
        seconds = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (math.isfinite(seconds) and seconds > 0):
        raise argparse.ArgumentTypeError(f"{text}: a number of seconds above 0")
    return seconds


def check_ssid(text: str) -> str:
    """An SSID of at most 32 bytes (802.11): ESP-IDF cuts a longer one to its 32-byte field, and the board looks
    for a network of that name for ever."""
    if len(text.encode()) > 32:
        raise argparse.ArgumentTypeError(f"{len(text.encode())} bytes: an SSID is at most 32")
    return text


def check_wifi_password(text: str) -> str:
    """A password some Wi-Fi security takes: none (an open network), WEP's 5 or 13 characters or 10 or 26 hex
    digits, or WPA's passphrase of 8-63 characters or key of 64 hex digits. Anything else never joins: ESP-IDF
    cuts it to its 64-byte field, or the access point refuses it, and the board boots to no network."""
    n = len(text.encode())
    hex_key = all(c in "0123456789abcdefABCDEF" for c in text)
    if not (n in (0, 5) or 8 <= n <= 63 or (n == 64 and hex_key)):
        raise argparse.ArgumentTypeError(f"{n} bytes: no Wi-Fi security takes that (WPA: 8-63 characters or 64 hex "
                                         "digits; WEP: 5 or 13 characters; empty for an open network)")
    return text


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.epilog = ("exit status: 0 flashed; 1 the board, its port or a step on it failed; 2 a usage error (an option, "
                "or the key, image or registry file it names), refused before the board is touched; 130 interrupted "
                "(Ctrl-C, SIGTERM, SIGHUP), esptool or mpremote stopped with it")
    p.add_argument("--port", required=True, help="serial port of the board (or a virtual device's pty)")
    p.add_argument("--profile", required=True, choices=PROFILES, help="device class")
    p.add_argument("--device-id", required=True, type=_ident)
    p.add_argument("--site", required=True, type=_ident)
    p.add_argument("--broker", required=True, type=_host_port, metavar="HOST:PORT",
                   help="the site broker as the device reaches it")
    p.add_argument("--tls", type=Path, metavar="CA_PEM", help="connect to the broker with TLS, taking only a "
                   "certificate signed by this CA (PEM) for the broker's host name")
    p.add_argument("--wifi-ssid", type=check_ssid, default="")
    p.add_argument("--wifi-password", type=check_wifi_password, default="")
    p.add_argument("--mqtt-user", default=None, help="broker user name: the device id, the only one the site "
                   "broker's ACL lets publish its topics (the default)")
    p.add_argument("--mqtt-password", default=None)
    p.add_argument("--ntp", action="append", type=check_host, metavar="HOST", help="NTP server (repeatable; "
                   "default pool.ntp.org)")
    keys = p.add_mutually_exclusive_group()
    keys.add_argument("--key", help="device HMAC key, 64 hex digits")
    keys.add_argument("--key-file", type=Path, help="file holding the key in hex")
    p.add_argument("--registry", type=Path, default=None,
                   help="gateway [[devices]] fragment to record the device in (default registry-SITE.toml)")
    p.add_argument("--no-registry", action="store_true", help="record nothing")
    p.add_argument("--image", type=Path, help="write this MicroPython image with esptool first")
    p.add_argument("--chip", default="esp32", help="esptool chip for --image (default esp32)")
    p.add_argument("--image-offset", default=None, help="flash offset for --image (default by chip)")
    p.add_argument("--erase", action="store_true", help="erase the whole flash before --image")
    p.add_argument("--baud", type=_rate, default=115200, help="REPL baud rate")
    p.add_argument("--connect-timeout", type=_seconds, default=10.0, metavar="S",
                   help="how long to wait for the board's REPL (default 10)")
    p.add_argument("--image-baud", type=_rate, default=460800, help="esptool baud rate")
    p.add_argument("--no-compile", action="store_true", help="copy lib/ as .py source (debugging)")
    p.add_argument("--romfs", action="store_true", help="put lib/ in the board's ROMFS partition, where its code "
                   "runs from flash instead of the heap (needs a MicroPython built with ROMFS)")
    p.add_argument("--force", action="store_true", help="rewrite files the board already has")
    p.add_argument("--no-reset", action="store_true", help="leave the board at its REPL afterwards")
    p.add_argument("--resume", action="store_true", help="no soft reset before copying (as mpremote resume)")
    p.add_argument("--firmware", type=Path, default=upy.FIRMWARE, help=argparse.SUPPRESS)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.markup import escape

    out = Console()
    err = Console(stderr=True)
    try:
        with signals.as_ctrl_c():  # SIGTERM or SIGHUP too: esptool or mpremote stopped with it
            return _run(args, out)
    except FlashError as exc:  # one line, as it is: a path broken at the terminal's width cannot be copied
        err.print(f"[bold red]flash failed:[/] {escape(str(exc))}", soft_wrap=True)
        return 2 if isinstance(exc, UsageError) else 1
    except KeyboardInterrupt:
        err.print("[bold red]flash interrupted:[/] the board may hold part of the image or files: flash it again",
                  soft_wrap=True)
        return 130


def _run(args: argparse.Namespace, out: Any) -> int:
    from rich import progress as rp
    from rich.markup import escape
    from rich.table import Table

    if args.image is not None:
        try:
            found = args.image.is_file()
        except OSError as exc:  # a directory the operator may not enter
            raise UsageError(f"--image: cannot reach {args.image} ({exc.strerror})") from None
        if not found:
            raise UsageError(f"--image: {args.image} does not exist")
    if args.romfs and args.no_compile:
        raise UsageError("--romfs takes the compiled modules: leave out --no-compile")
    mqtt_user = broker_user(args.device_id, args.mqtt_user)
    registry = None if args.no_registry else (args.registry or Path(f"registry-{args.site}.toml"))
    ca = None if args.tls is None else read_ca(args.tls)
    key, key_source = resolve_key(args, registry)
    host, port = args.broker
    prov = Provision(args.device_id, args.site, args.profile, host, port, key,
                     mqtt_user=mqtt_user, mqtt_password=args.mqtt_password,
                     wifi_ssid=args.wifi_ssid, wifi_password=args.wifi_password, ca=ca,
                     ntp=tuple(args.ntp or ("pool.ntp.org",)))
    with tempfile.TemporaryDirectory(prefix="lifeline-flash-") as tmp:
        files = stage(prov, Path(tmp), firmware=args.firmware, compile_mpy=not args.no_compile)
        # The key is recorded before any board gets it: a key only the board held would be lost to the gateway.
        status = record(registry, args.site, args.device_id, args.profile, key) if registry else None
        if args.image is not None:
            out.print(f"writing {escape(str(args.image))} with esptool")
            write_image(args.port, args.image, args.chip, args.image_offset, args.erase, args.image_baud)
        if args.romfs:
            with board(args.port, args.baud, args.connect_timeout, soft_reset=not args.resume) as b:
                b.check_loads(files)
                if not b.has_romfs():
                    raise FlashError(f"{args.port}: this MicroPython has no ROMFS partition; write a build with "
                                     "ROMFS (--image) or leave out --romfs")
            image = romfs_of(files, Path(tmp))
            out.print(f"deploying {image.stat().st_size} bytes of ROMFS with mpremote")
            deploy_romfs(args.port, image)
            files = [f for f in files if not f.path.startswith("lib/")]  # upload() then empties lib/
        total = sum(f.size for f in files)
        columns = (rp.TextColumn("[bold]{task.description}"), rp.BarColumn(),
                   rp.TextColumn("{task.fields[files]}"), rp.DownloadColumn(), rp.TransferSpeedColumn(),
                   rp.TimeRemainingColumn())
        link = board(args.port, args.baud, args.connect_timeout, soft_reset=not args.resume)
        with link as b, rp.Progress(*columns, console=out) as bar:
            task = bar.add_task(args.device_id, total=total, files=f"0/{len(files)} files")
            done = 0

            def progress(nbytes: int, f: Staged | None) -> None:
                nonlocal done
                if f is None:
                    done += 1
                    bar.update(task, files=f"{done}/{len(files)} files")
                else:
                    bar.update(task, advance=nbytes, description=f"{args.device_id} {f.path}")

            result = upload(b, files, progress, force=args.force, new_code=args.romfs)
            bar.update(task, description=args.device_id)
            if not args.no_reset:
                b.reboot()
    # what the operator typed (a port, a host, a path with [brackets]) shown as text, never markup
    table = Table(title=f"flashed {args.device_id} on {escape(args.port)}", show_header=False)
    code_bytes = sum(f.size for f in files if f.path.startswith("lib/"))
    code = (f"lib/ holds {code_bytes} bytes of {'.mpy' if not args.no_compile else '.py'}" if not args.romfs
            else "the code is in the ROMFS partition, lib/ is empty")
    table.add_row("profile / site", f"{args.profile} / {args.site}")
    table.add_row("broker", f"{escape(host)}:{port}{' (TLS)' if ca else ''}")
    table.add_row("files", f"{len(result.written)} written, {len(result.unchanged)} unchanged, "
                           f"{len(result.removed)} stale removed; all verified by SHA-256")
    table.add_row("bytes", f"{result.bytes_written} written in {result.seconds:.1f} s; {code}")
    table.add_row("key", f"{escape(key_source)}, sha256 {hashlib.sha256(key).hexdigest()[:12]}")
    if registry is not None:
        table.add_row("registry", f"{escape(str(registry))} ({status}): paste its \\[\\[devices]] into site.toml")
    table.add_row("next", "left at the REPL" if args.no_reset else "board reset: it boots the firmware")
    out.print(table)
    return 0
