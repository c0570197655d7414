"""Decoding and MAC checks of device messages in processes of their own, so the ingest process keeps its one
core for the work that needs per-device state: sequence numbers, alarms, the outbox and its commit.

Decoding a message (COSE_Mac0, HMAC, two CBOR decodes, the SenML schema) needs only the device's key. It was
about a third of the ingest's CPU (docs/performance.md, "The check stage"). With `[ingest] check_processes
= N` the site subscriber hands each batch to this stage as it arrives. The stage splits the batch into N
contiguous parts, and each process decodes its part while the ingest handles the batch before. The results
come back in order, so a device's messages keep their order.

Nothing here can lose a message. A batch is acknowledged only after the ingest has committed it, and the
ingest checks a batch the same way whoever decoded it. So if a process dies, the batch parts it held are
decoded in the ingest process instead, and the process is started again after a pause: RESTART_FIRST_S,
doubled each time a new one dies before its first answer (or cannot be started), up to RESTART_MAX_S. Any
MAC failure or malformed message is the ingest's to quarantine, as before, because a result is only a verdict.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pickle
import sys
from collections import deque
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from gateway import check_worker
from gateway.device_list import DeviceList
from gateway.ingest import Incoming
from gateway.logs import event
from gateway.message_decode import Decoded

log = logging.getLogger("lifeline.gateway.check_stage")

RESTART_FIRST_S = 1.0
RESTART_MAX_S = 60.0
ANSWER_S = 10.0  # a batch part takes milliseconds; a process silent this long (stopped, looping) is killed
CLOSE_WAIT_S = 5.0
_ROOT = str(Path(__file__).resolve().parent.parent)  # where the `gateway` package is, for the child's path


class _Process:
    """One check process and the batches it has not answered yet, in the order they were sent."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.waiting: deque[asyncio.Future[list[Decoded | None] | None]] = deque()
        self.answered = 0
        self.reader = asyncio.create_task(self._read())

    @property
    def alive(self) -> bool:
        return not self.reader.done()

    def send(self, data: bytes) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(data)

    def ask(self, data: bytes) -> asyncio.Future[list[Decoded | None] | None]:
        """The answer to one batch; None if the process is lost before it answers."""
        answer: asyncio.Future[list[Decoded | None] | None] = asyncio.get_running_loop().create_future()
        self.waiting.append(answer)
        with contextlib.suppress(ConnectionError, RuntimeError):  # closing: the reader is about to see the end
            self.send(data)
        return answer

    async def _read(self) -> None:
        stdout = self.proc.stdout
        assert stdout is not None
        try:
            while True:
                head = await stdout.readexactly(check_worker.HEAD.size)
                body = await stdout.readexactly(check_worker.HEAD.unpack(head)[0])
                answer = self.waiting.popleft()
                self.answered += 1
                if not answer.done():  # a cancelled batch is not waited for
                    answer.set_result(pickle.loads(body))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the process ended
        except Exception:  # an answer that cannot be read: this process is not to be trusted with more
            log.exception("check process %d sent what cannot be read", self.proc.pid)
            self.proc.kill()
        finally:
            for answer in self.waiting:
                if not answer.done():
                    answer.set_result(None)
            self.waiting.clear()


class CheckStage:
    """N check processes, fed the registry's devices at start and on each reload."""

    def __init__(self, processes: int, devices: DeviceList) -> None:
        self.count = processes
        self.devices = devices
        self._procs: list[_Process] = []
        self._restart_s = RESTART_FIRST_S
        self._restarting: set[asyncio.Task[None]] = set()
        self.lost = 0  # processes that died
        self.reloads = 0
        self.in_process = 0  # messages decoded in the ingest process because their check process was lost

    async def start(self) -> None:
        for _ in range(self.count):
            try:
                self._procs.append(await self._spawn())
            except OSError as exc:  # the gateway runs without it, and keeps trying
                delay, self._restart_s = self._restart_s, min(self._restart_s * 2, RESTART_MAX_S)
                event(log, "check-process-not-started", logging.ERROR, error=str(exc), retry_in_s=delay)
                self._schedule(self._restart(None, delay))
        event(log, "check-processes", started=len(self._procs), pids=",".join(str(p.proc.pid) for p in self._procs))

    async def _spawn(self) -> _Process:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, (_ROOT, os.environ.get("PYTHONPATH")))))
        proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "gateway.check_worker", env=env,
                                                    stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
        started = _Process(proc)
        started.send(check_worker.frame(("devices", self.devices)))
        started.reader.add_done_callback(lambda _: self._lost(started))
        return started

    def pids(self) -> list[int]:
        return [p.proc.pid for p in self._procs if p.alive]

    def replace(self, devices: DeviceList) -> None:
        """A reloaded registry: batches sent after this are checked against it, and the ingest decodes those
        sent before (against it too), as it would have without the stage."""
        self.devices = devices
        self.reloads += 1
        data = check_worker.frame(("devices", devices))
        for p in self._procs:
            if p.alive:
                with contextlib.suppress(ConnectionError, RuntimeError):
                    p.send(data)

    def prepare(self, items: list[Incoming]) -> asyncio.Future[list[Incoming]]:
        """Send the batch's parts now; the future gives the batch back with what each part's process decoded."""
        live = [p for p in self._procs if p.alive]
        size = max(-(-len(items) // max(len(live), 1)), 1)
        parts = [items[i:i + size] for i in range(0, len(items), size)]
        asked = [(p, p.ask(check_worker.frame(("batch", [(m.topic, m.payload) for m in part]))))
                 for p, part in zip(live, parts, strict=False)]
        return asyncio.ensure_future(self._collect(parts, asked, self.reloads))

    async def _collect(self, parts: list[list[Incoming]],
                       asked: list[tuple[_Process, asyncio.Future[list[Decoded | None] | None]]],
                       reloads: int) -> list[Incoming]:
        out: list[Incoming] = []
        for i, part in enumerate(parts):
            decoded = await _answer(*asked[i]) if i < len(asked) else None
            if reloads != self.reloads:  # checked against the registry before a reload
                out += part
            elif decoded is None or len(decoded) != len(part):  # lost, or no process: decoded in the ingest
                self.in_process += len(part)
                out += part
            else:
                out += [Incoming(m.topic, m.payload, m.retained, m.received, d)
                        for m, d in zip(part, decoded, strict=True)]
        return out

    def _lost(self, p: _Process) -> None:
        if p not in self._procs:
            return  # closed
        self._procs.remove(p)
        self.lost += 1
        # one that had been working is started again soon; one that died before its first answer, later each time
        delay = RESTART_FIRST_S if p.answered else self._restart_s
        self._restart_s = min(delay * 2, RESTART_MAX_S)
        self._schedule(self._restart(p, delay))

    def _schedule(self, restart: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(restart)
        self._restarting.add(task)
        task.add_done_callback(self._restarting.discard)

    async def _restart(self, p: _Process | None, delay: float) -> None:
        """Start a process again after `delay`: in place of `p`, lost, or of one that could not be started."""
        if p is not None:
            await p.proc.wait()
            event(log, "check-process-lost", logging.ERROR, pid=p.proc.pid, returncode=p.proc.returncode,
                  restart_in_s=delay)
        while True:
            await asyncio.sleep(delay)
            try:
                started = await self._spawn()
            except OSError as exc:  # the ingest decodes meanwhile, as it does without the stage
                delay, self._restart_s = self._restart_s, min(self._restart_s * 2, RESTART_MAX_S)
                event(log, "check-process-not-started", logging.ERROR, error=str(exc), retry_in_s=delay)
                continue
            self._procs.append(started)
            event(log, "check-process-started", pid=started.proc.pid)
            return

    async def close(self) -> None:
        """End the processes: each sees its stdin end, answers what it holds and exits."""
        for task in list(self._restarting):
            task.cancel()
        procs, self._procs = self._procs, []
        for p in procs:
            assert p.proc.stdin is not None
            p.proc.stdin.close()
        for p in procs:
            try:
                await asyncio.wait_for(p.proc.wait(), CLOSE_WAIT_S)
            except TimeoutError:
                p.proc.kill()
                await p.proc.wait()
            await p.reader


async def _answer(p: _Process, answer: asyncio.Future[list[Decoded | None] | None]) -> list[Decoded | None] | None:
    """The process's answer, or None if it is lost or silent past ANSWER_S. A process that stopped answering
    would hold the ingest, which takes batches in order, for good: it is killed, its parts are decoded in the
    ingest, and it is started again as a lost one is."""
    try:
        return await asyncio.wait_for(asyncio.shield(answer), ANSWER_S)
    except TimeoutError:
        event(log, "check-process-stuck", logging.ERROR, pid=p.proc.pid, waited_s=ANSWER_S)
        with contextlib.suppress(ProcessLookupError):
            p.proc.kill()
        return None
