"""The supervisor of ``microbroker run --workers N`` and ``--reload``.

Each worker is a fresh interpreter running ``python -m microbroker.cli run APP
--worker-channel FD``: it imports the app itself (nothing is inherited from
this process but the environment) and writes ``ready`` on its end of a socket
pair once its service serves. The supervisor

- restarts a worker that exits on its own, after a backoff that doubles
  (0.5 s to 10 s), and gives up (exit 1) when one worker needs more than
  ``--max-restarts`` restarts within a minute;
- forwards SIGTERM / SIGINT to the workers, waits ``--graceful-timeout`` for
  them to drain, kills those still running, and exits 0 when all stopped
  cleanly; a second signal kills them at once (exit 130);
- with ``--reload``, starts a new generation of workers when a .py file
  changes and retires the old one (SIGTERM, drain) once every new worker is
  ready: new first, so that the queue groups never lose their last member and
  a change that does not load leaves the old code serving.

Workers run in a process group of their own, so that a Ctrl-C in the terminal
reaches the supervisor alone and each worker gets one SIGTERM, not a second
signal in the middle of its drain. A worker whose supervisor dies (kill -9)
sees its end of the socket pair close and stops gracefully by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from ._common import FAILED, INTERRUPTED, OK, USAGE, CliError, usage_error

logger = logging.getLogger("microbroker.run")

READY = b"ready\n"
"""What a worker writes on its channel once its service serves."""

BACKOFF_FIRST = 0.5
"""Seconds before the first restart of a worker that died; doubled for each death since."""
BACKOFF_MAX = 10.0
RESTART_WINDOW = 60.0
"""Deaths of one worker counted against ``--max-restarts`` are those of the last minute."""


class _Worker:
    """One worker process, its channel and what the supervisor knows of it."""

    def __init__(self, slot: int, proc: asyncio.subprocess.Process, channel: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        self.slot = slot
        self.proc = proc
        self.channel = channel
        #: True once the worker said it serves, False when it exited before that.
        self.ready: asyncio.Future[bool] = loop.create_future()
        #: The exit code (negative: killed by that signal), once it exited.
        self.exited: asyncio.Future[int] = loop.create_future()
        #: Stopped on purpose (shutdown, reload): its exit is not a death to restart.
        self.retiring = False

    @property
    def name(self) -> str:
        return f"worker {self.slot + 1} (pid {self.proc.pid})"

    def signal(self, sig: signal.Signals) -> None:
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


class Supervisor:
    """Runs ``workers`` copies of the app, restarts the dead, reloads on change, drains on stop."""

    def __init__(
        self, args: argparse.Namespace, *, app_dir: Path, level: str, workers: int
    ) -> None:
        self.app = args.app
        self.app_dir = app_dir
        self.workers = workers
        self.reload: bool = args.reload
        self.graceful_timeout: float = args.graceful_timeout
        self.max_restarts: int = args.max_restarts
        self.argv = [
            sys.executable,
            "-m",
            "microbroker.cli",
            "run",
            args.app,
            "--app-dir",
            str(app_dir),
            "--log-level",
            level,
            "--workers",
            str(workers),
        ]
        for flag in ("broker", "address"):
            value = getattr(args, flag, None)
            if value:
                self.argv += [f"--{flag}", value]
        self.reload_dirs = [Path(d).resolve() for d in args.reload_dir] or [app_dir]
        for directory in self.reload_dirs:
            if not directory.is_dir():
                usage_error(f"--reload-dir {directory}: not a directory")
        self.slots: list[_Worker | None] = [None] * workers
        self.live: set[_Worker] = set()
        self.deaths = [collections.deque[float]() for _ in range(workers)]
        self.changes: set[str] = set()
        self.stopping = False
        self.forced = False
        self.failed = False

    def run(self) -> int:
        if self.reload:
            try:
                import watchfiles  # noqa: F401
            except ImportError as exc:
                raise CliError(
                    f"--reload needs the watchfiles package ({exc}): "
                    "pip install 'microbroker[reload]'",
                    USAGE,
                ) from exc
        return asyncio.run(self._main())

    # Main loop ------------------------------------------------------------------

    async def _main(self) -> int:
        loop = asyncio.get_running_loop()
        self.stop_event = asyncio.Event()
        self.wake = asyncio.Event()
        self.changing = asyncio.Lock()
        self.tasks: set[asyncio.Task[None]] = set()
        handled: list[signal.Signals] = []
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self._on_signal, sig)
                handled.append(sig)
        unwatch = asyncio.Event()
        watcher: asyncio.Task[None] | None = None
        try:
            logger.info(
                "supervisor (pid %d) of %s: %d worker(s)%s; SIGTERM or Ctrl-C stops them",
                os.getpid(),
                self.app,
                self.workers,
                ", reloading on change" if self.reload else "",
            )
            if self.reload:
                watcher = loop.create_task(self._watch_files(unwatch))
            generation = await self._start_generation()
            if isinstance(generation, int):
                if not self.reload:
                    logger.error("the app did not start: stopping")
                    await self._shutdown()
                    return generation
                logger.error("the app did not start: waiting for a change to try again")
            elif generation:
                self.slots = list(generation)
            while not (self.stopping or self.failed):
                await self.wake.wait()
                self.wake.clear()
                if self.changes and not (self.stopping or self.failed):
                    changes, self.changes = self.changes, set()
                    await self._reload(changes)
            return await self._shutdown()
        finally:
            unwatch.set()
            if watcher is not None:
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watcher
            for task in list(self.tasks):
                task.cancel()
            for worker in list(self.live):
                # Only after an error of the supervisor itself: leave no worker behind.
                worker.signal(signal.SIGKILL)
            for sig in handled:
                loop.remove_signal_handler(sig)

    def _on_signal(self, sig: signal.Signals) -> None:
        if not self.stopping:
            logger.info(
                "%s received: stopping the workers gracefully (again to kill them)", sig.name
            )
            self.stopping = True
            self.stop_event.set()
            self.wake.set()
        elif not self.forced:
            logger.warning("%s received again: killing the workers", sig.name)
            self.forced = True
            for worker in list(self.live):
                worker.signal(signal.SIGKILL)

    async def _shutdown(self) -> int:
        self.stopping = True
        self.stop_event.set()
        # A restart may be spawning a worker right now: wait for it, so that it is stopped too.
        async with self.changing:
            workers = sorted(self.live, key=lambda w: w.slot)
        if workers:
            logger.info("stopping %d worker(s)", len(workers))
        clean = await self._retire(workers)
        if self.forced:
            return INTERRUPTED
        if self.failed:
            return FAILED
        if not clean:
            logger.error("not every worker stopped cleanly")
            return FAILED
        if workers:
            logger.info("all workers stopped")
        return OK

    # Workers --------------------------------------------------------------------

    async def _spawn(self, slot: int) -> _Worker:
        parent, child = socket.socketpair()
        try:
            proc = await asyncio.create_subprocess_exec(
                *self.argv,
                "--worker-channel",
                str(child.fileno()),
                stdin=subprocess.DEVNULL,
                pass_fds=(child.fileno(),),
                process_group=0,
            )
        except BaseException:
            parent.close()
            raise
        finally:
            child.close()
        parent.setblocking(False)
        worker = _Worker(slot, proc, parent)
        self.live.add(worker)
        logger.info("%s started", worker.name)
        self._spawn_task(self._watch(worker))
        return worker

    def _spawn_task(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and (error := task.exception()) is not None:
            # A worker could not be watched or restarted (cannot spawn, say): stop, loudly.
            logger.error("supervising failed: %s", error, exc_info=error)
            self.failed = True
            self.wake.set()

    async def _watch(self, worker: _Worker) -> None:
        loop = asyncio.get_running_loop()
        said = b""
        try:
            while not said.endswith(b"\n"):
                chunk = await loop.sock_recv(worker.channel, 64)
                if not chunk:
                    break
                said += chunk
        except OSError:
            pass
        if said == READY:
            logger.info("%s ready", worker.name)
            worker.ready.set_result(True)
        code = await worker.proc.wait()
        worker.channel.close()
        self.live.discard(worker)
        worker.exited.set_result(code)
        if not worker.ready.done():
            worker.ready.set_result(False)
        if worker.retiring or self.stopping:
            # A worker still importing when told to stop dies of SIGTERM: as asked.
            expected = code in (0, -signal.SIGTERM) or self.forced
            level = logging.INFO if expected else logging.WARNING
            logger.log(level, "%s %s", worker.name, describe_exit(code))
            return
        if self.slots[worker.slot] is not worker:
            return  # a new generation that did not start: _start_generation reports it
        logger.warning("%s %s unexpectedly", worker.name, describe_exit(code))
        await self._restart(worker)

    async def _restart(self, dead: _Worker) -> None:
        now = asyncio.get_running_loop().time()
        deaths = self.deaths[dead.slot]
        deaths.append(now)
        while deaths and now - deaths[0] > RESTART_WINDOW:
            deaths.popleft()
        if len(deaths) > self.max_restarts:
            logger.error(
                "worker %d died %d times within %gs: giving up (--max-restarts %d)",
                dead.slot + 1,
                len(deaths),
                RESTART_WINDOW,
                self.max_restarts,
            )
            self.failed = True
            self.wake.set()
            return
        delay = min(BACKOFF_FIRST * 2 ** (len(deaths) - 1), BACKOFF_MAX)
        logger.info("restarting worker %d in %gs", dead.slot + 1, delay)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stop_event.wait(), delay)
        async with self.changing:
            # A reload may have replaced it meanwhile, or a stop begun.
            if self.stopping or self.slots[dead.slot] is not dead:
                return
            self.slots[dead.slot] = await self._spawn(dead.slot)

    async def _start_generation(self) -> list[_Worker] | int:
        """Start a worker per slot and wait until all are ready.

        Returns them, or the exit code of one that exited before it was ready
        (the others are then stopped); an empty list when a stop began meanwhile.
        """
        new = [await self._spawn(slot) for slot in range(self.workers)]
        stop = asyncio.get_running_loop().create_task(self.stop_event.wait())
        pending: set[asyncio.Future[Any]] = {w.ready for w in new}
        try:
            while pending:
                done, _ = await asyncio.wait(pending | {stop}, return_when=asyncio.FIRST_COMPLETED)
                if stop in done:
                    await self._retire(new)
                    return []
                pending -= done
                for worker in new:
                    if worker.ready.done() and not worker.ready.result():
                        code = worker.exited.result()
                        logger.error("%s %s before it was ready", worker.name, describe_exit(code))
                        await self._retire([w for w in new if w is not worker])
                        return code if code > 0 else FAILED
        finally:
            stop.cancel()
        dead = next((w for w in new if w.exited.done()), None)
        if dead is not None:
            # Ready, then gone before the others were: not a generation to serve with.
            code = dead.exited.result()
            logger.error("%s %s while the others started", dead.name, describe_exit(code))
            await self._retire([w for w in new if w is not dead])
            return code if code > 0 else FAILED
        return new

    async def _retire(self, workers: list[_Worker]) -> bool:
        """SIGTERM ``workers``, let them drain, kill the late; True if all stopped cleanly."""
        if not workers:
            return True
        for worker in workers:
            if not worker.retiring:  # one SIGTERM each: a second one cuts a drain short
                worker.retiring = True
                worker.signal(signal.SIGTERM)
        exits = [w.exited for w in workers]
        _, late = await asyncio.wait(exits, timeout=self.graceful_timeout)
        if late:
            for worker in workers:
                if not worker.exited.done():
                    logger.warning(
                        "%s did not stop within %gs: killing it", worker.name, self.graceful_timeout
                    )
                    worker.signal(signal.SIGKILL)
            await asyncio.wait(exits)
        # SIGTERM kills a worker that had not installed its handlers yet: it served nothing.
        return not late and all(w.exited.result() in (0, -signal.SIGTERM) for w in workers)

    # Reload ---------------------------------------------------------------------

    async def _watch_files(self, unwatch: asyncio.Event) -> None:
        import watchfiles

        where = ", ".join(str(d) for d in self.reload_dirs)
        logger.info("watching %s for changes to .py files", where)
        async for changes in watchfiles.awatch(
            *self.reload_dirs, watch_filter=watchfiles.PythonFilter(), stop_event=unwatch
        ):
            self.changes.update(path for _, path in changes)
            self.wake.set()

    async def _reload(self, changes: set[str]) -> None:
        shown = sorted(_relative(path, self.reload_dirs) for path in changes)
        more = f" and {len(shown) - 3} more" if len(shown) > 3 else ""
        logger.info("%s changed: starting new workers", ", ".join(shown[:3]) + more)
        async with self.changing:
            if self.stopping:
                return
            generation = await self._start_generation()
            if isinstance(generation, int):
                serving = any(w is not None and w in self.live for w in self.slots)
                logger.error(
                    "the changed code did not start: %s",
                    "the previous workers go on serving" if serving else "waiting for a change",
                )
                return
            if not generation:
                return
            old = [w for w in self.slots if w is not None]
            self.slots = list(generation)
            await self._retire(old)
            logger.info("reloaded: %d worker(s) serve the new code", len(generation))


def _relative(path: str, dirs: list[Path]) -> str:
    for directory in dirs:
        with contextlib.suppress(ValueError):
            return str(Path(path).relative_to(directory))
    return path
