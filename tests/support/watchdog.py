"""Where a hanging test waits: every pending asyncio task's stack, printed before its timeout."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import threading
import traceback
from collections.abc import Iterator

#: How long before pytest-timeout stops a test its tasks' stacks are printed.
_AHEAD = 10.0


def _pending_tasks() -> list[asyncio.Task[object]]:
    # The registry of every loop's tasks; all_tasks() needs the loop, which runs in another thread.
    registry = getattr(asyncio.tasks, "_all_tasks", None) or getattr(
        asyncio.tasks, "_scheduled_tasks", ()
    )
    return [task for task in list(registry) if not task.done()]


def print_task_stacks(title: str) -> None:
    """Print where each pending task awaits, to stderr: pytest shows it with the failure."""
    out = sys.__stderr__ or sys.stderr
    tasks = _pending_tasks()
    lines = [f"\n===== {title}: {len(tasks)} pending asyncio task(s) =====\n"]
    for task in tasks:
        lines.append(f"--- {task!r}\n")
        for frame in task.get_stack():
            lines.extend(traceback.format_stack(frame, limit=1))
    lines.append("===== end of task stacks =====\n")
    with contextlib.suppress(Exception):
        out.write("".join(lines))
        out.flush()


@contextlib.contextmanager
def stacks_before_timeout(timeout: float, test: str) -> Iterator[None]:
    """While in the block, print task stacks ``_AHEAD`` seconds before ``timeout`` runs out."""
    if timeout <= _AHEAD:
        yield
        return
    timer = threading.Timer(timeout - _AHEAD, print_task_stacks, (f"{test} still running",))
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
