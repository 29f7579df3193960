"""The Python calls and calls into C one message of a case makes, counted with ``sys.setprofile``.

    python benchmarks/call_count.py nats microbroker --address nats://127.0.0.1:PORT \\
        [--messages 2000] [--shape 1->1] [--size 128] [--top 40]

Runs the case of ``benchmarks/one_case.py`` in two child processes, with
``messages`` and twice as many, counting every Python function entered
(``call`` events: a coroutine resumed counts again) and every builtin called
(``c_call``); the difference of the two counts divided by ``messages`` is
what one message costs, so that start-up, warm-up and closing cancel out.
Prints the totals and the functions called at least once every two messages,
most called first. What callgrind's instructions per message are spent on.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import subprocess
import sys
from pathlib import Path
from types import FrameType
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE)]

import one_case  # noqa: E402
from run import SHAPES  # noqa: E402

Key = tuple[str, str]


def _where(filename: str) -> str:
    """A short place for a code object: the part after ``src/`` or ``site-packages/``."""
    return filename.split("/src/")[-1].split("site-packages/")[-1]


def counted(args: argparse.Namespace) -> collections.Counter[Key]:
    """The calls of one run of the case (``args.messages`` messages)."""
    counts: collections.Counter[Key] = collections.Counter()

    def profile(frame: FrameType, event: str, arg: Any) -> None:
        if event == "call":
            code = frame.f_code
            counts[(_where(code.co_filename), code.co_name)] += 1
        elif event == "c_call":
            counts[("C", getattr(arg, "__qualname__", repr(arg)))] += 1

    sys.setprofile(profile)
    try:
        asyncio.run(one_case.main_async(args))
    finally:
        sys.setprofile(None)
    return counts


def counted_in_child(args: argparse.Namespace, messages: int) -> dict[Key, int]:
    """:func:`counted` in a new process, so that each count pays the same start-up."""
    argv = [sys.executable, __file__, args.transport, args.variant, "--address", args.address]
    argv += ["--messages", str(messages), "--shape", args.shape, "--size", str(args.size)]
    out = subprocess.run([*argv, "--child"], check=True, capture_output=True, text=True).stdout
    return {(where, name): n for where, name, n in json.loads(out)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("transport")
    parser.add_argument("variant")
    parser.add_argument("--address", required=True)
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--shape", default="1->1", choices=tuple(SHAPES))
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--top", type=int, default=40, help="functions to list")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps([[where, name, n] for (where, name), n in counted(args).items()]))
        return
    messages = args.messages
    once = counted_in_child(args, messages)
    twice = counted_in_child(args, 2 * messages)
    per_message = {key: (twice[key] - once.get(key, 0)) / messages for key in twice}
    python = sum(n for (where, _), n in per_message.items() if where != "C")
    builtin = sum(n for (where, _), n in per_message.items() if where == "C")
    print(f"{python:.1f} Python calls and {builtin:.1f} calls into C a message")
    listed = sorted(
        ((n, key) for key, n in per_message.items() if n >= 0.5), key=lambda row: -row[0]
    )
    for n, (where, name) in listed[: args.top]:
        print(f"{n:6.2f}  {where}:{name}")


if __name__ == "__main__":
    main()
