"""``microbroker run``: a service in this process, supervised workers, reload, logging, errors.

Everything runs as a user runs it: the console script in a subprocess, an app
module written to a temporary directory, the http broker (the default, over
loopback, with a private registry), a publisher in another process that
publishes with ``confirm=True`` (it returns once a subscriber acked) and
reports each message it got confirmed. The workers write one line per
message they handle (``handled N PID``) to the supervisor's stdout before
the handler returns, so before the ack: a confirmed message missing from
those lines is a message lost.
"""

from __future__ import annotations

import collections
import json
import os
import re
import signal
import socket
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from cli_support import Background, Cli

APP = """\
import asyncio
import logging
import os

import microbroker

VERSION = {version}
log = logging.getLogger(__name__)
log.info("app module loaded (version %s)", VERSION)

service = microbroker.Service("jobs")


@service.subscriber("jobs", queue="workers")
async def on_job(job: dict) -> None:
    if job.get("slow"):
        # Long enough for a test to signal the worker while this handler runs.
        os.write(1, f"started {{job['n']}} {{os.getpid()}}\\n".encode())
        await asyncio.sleep(job["slow"])
    await asyncio.sleep(0.002)
    # One write, so that the lines of several workers sharing one pipe never mix.
    os.write(1, f"handled {{job['n']}} {{os.getpid()}}\\n".encode())


class Version:
    async def Get(self, request: dict) -> dict:
        return {{"version": VERSION, "pid": os.getpid()}}


service.handle(Version())


def make_service() -> microbroker.Service:
    made = microbroker.Service("made")
    made.handle(Version())
    return made


async def crashing_soon() -> microbroker.Service:
    # Serves, then dies by itself half a second later: a worker that keeps crashing.
    asyncio.get_running_loop().call_later(0.5, os._exit, 3)
    return make_service()
"""

PUBLISHER = """\
import asyncio
import os
import signal
import socket
import sys

import microbroker


async def main(count: int, window: int, slow: int, seconds: int) -> None:
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    # Messages still unconfirmed when it stops are not waited for long: the test is over.
    broker = microbroker.get_broker(drain_timeout=1)
    service = microbroker.Service("publisher", broker=broker)
    jobs = service.event("jobs")
    slots = asyncio.Semaphore(window)

    async def one(n: int) -> None:
        try:
            async with asyncio.timeout(5):
                await jobs.publish({"n": n, "slow": seconds if n == slow else 0}, confirm=True)
        except Exception as exc:
            os.write(1, f"failed {n} {type(exc).__name__}\\n".encode())
        else:
            os.write(1, f"confirmed {n}\\n".encode())
        finally:
            slots.release()

    tasks = []
    async with service:
        os.write(2, b"publishing\\n")
        for n in range(count):
            await slots.acquire()
            if stop.is_set():
                break
            tasks.append(asyncio.create_task(one(n)))
        await asyncio.gather(*tasks)
    os.write(1, b"done\\n")


asyncio.run(main(*(int(arg) for arg in sys.argv[1:5])))
"""

READY = re.compile(r"worker (\d+) \(pid (\d+)\) ready")


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "app"
    directory.mkdir()
    (directory / "app.py").write_text(APP.format(version=1))
    (directory / "publisher.py").write_text(PUBLISHER)
    return directory


def ready_workers(proc: Background) -> dict[int, int]:
    """Worker number -> pid of the last ``ready`` line of each worker."""
    return {int(slot): int(pid) for slot, pid in READY.findall(proc.stderr)}


def start_run(
    cli: Cli, background: list[Background], app_dir: Path, *args: str, workers: int = 0
) -> Background:
    proc = cli.start("run", *args, cwd=app_dir)
    background.append(proc)
    if workers:
        proc.wait_for(lambda: len(ready_workers(proc)) == workers, f"{workers} workers ready")
    return proc


def handled(proc: Background) -> list[tuple[int, int]]:
    """(message, pid) of every ``handled`` line, in order."""
    return [
        (int(n), int(pid))
        for n, pid in re.findall(r"^handled (\d+) (\d+)$", proc.stdout, flags=re.MULTILINE)
    ]


def confirmed(proc: Background) -> set[int]:
    return {int(n) for n in re.findall(r"^confirmed (\d+)$", proc.stdout, flags=re.MULTILINE)}


def publish(
    cli: Cli,
    background: list[Background],
    app_dir: Path,
    count: int,
    *,
    window: int = 8,
    slow: int = -1,
    seconds: int = 3,
) -> Background:
    """Publish messages 0..count-1 (until SIGTERM), ``window`` at a time; message ``slow``
    takes its handler ``seconds``."""
    argv = [str(arg) for arg in (count, window, slow, seconds)]
    proc = cli.start_python("publisher.py", *argv, cwd=app_dir)
    background.append(proc)
    return proc


def call_version(cli: Cli, service: str = "jobs") -> dict[str, int]:
    result = cli.run("call", service, "Version.Get", "{}", "--retries", "10", "--compact")
    assert result.code == 0, result
    reply: dict[str, int] = json.loads(result.out)
    return reply


def gone(pid: int) -> bool:
    """Whether process ``pid`` has exited (a zombie waiting for its parent counts as exited)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rpartition(")")[2].split()[0] == "Z"
    except FileNotFoundError:
        return True


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout}s")
        time.sleep(0.05)


def stop(proc: Background, sig: signal.Signals = signal.SIGTERM) -> int:
    proc.proc.send_signal(sig)
    return proc.finish(timeout=60)


# Supervised workers over the http broker -------------------------------------------


@pytest.mark.slow
def test_two_workers_share_a_queue_group(
    cli: Cli, background: list[Background], app_dir: Path
) -> None:
    run = start_run(cli, background, app_dir, "app:service", "--workers", "2", workers=2)
    pids = set(ready_workers(run).values())
    publisher = publish(cli, background, app_dir, 200)
    assert publisher.finish(timeout=60) == 0, publisher.stderr
    assert confirmed(publisher) == set(range(200)), publisher.stdout
    run.wait_for(lambda: len(handled(run)) >= 200, "200 messages handled")

    by_pid = collections.Counter(pid for _, pid in handled(run))
    counts = collections.Counter(n for n, _ in handled(run))
    # No worker died and none nacked: at-least-once had no reason to deliver twice.
    assert sorted(counts) == list(range(200))
    assert max(counts.values()) == 1, [n for n, c in counts.items() if c > 1]
    assert set(by_pid) == pids, by_pid  # both workers got some
    assert all(count > 0 for count in by_pid.values())

    # The workers are in a process group of their own: a Ctrl-C in a terminal reaches
    # the supervisor alone, which forwards it once.
    assert all(os.getpgid(pid) == pid != os.getpgid(run.proc.pid) for pid in pids)
    assert stop(run, signal.SIGINT) == 0, run.stderr
    assert "SIGINT received: stopping the workers gracefully" in run.stderr
    assert run.stderr.count("SIGTERM received: stopping gracefully") == 2  # in each worker
    assert "all workers stopped" in run.stderr
    assert all(gone(pid) for pid in pids)


@pytest.mark.slow
def test_sigterm_to_the_supervisor_mid_stream_loses_no_confirmed_message(
    cli: Cli, background: list[Background], app_dir: Path
) -> None:
    run = start_run(cli, background, app_dir, "app:service", "--workers", "2", workers=2)
    pids = set(ready_workers(run).values())
    publisher = publish(cli, background, app_dir, 5000, slow=100)
    run.wait_stdout("started 100 ")  # a handler is running, and others wait behind it

    assert stop(run) == 0, run.stderr
    assert "all workers stopped" in run.stderr
    assert all(gone(pid) for pid in pids)
    assert stop(publisher) == 0, publisher.stderr

    done = confirmed(publisher)
    seen = collections.Counter(n for n, _ in handled(run))
    assert 100 in done  # the handler running at SIGTERM finished and its ack went out
    assert done >= set(range(90))
    assert done <= set(seen), sorted(done - set(seen))
    # A graceful stop finishes and acks what runs, and hands back (nacks) what it has not
    # started: nothing handled twice.
    assert max(seen.values()) == 1, [n for n, c in seen.items() if c > 1]


@pytest.mark.slow
def test_a_second_signal_kills_the_workers_at_once(
    cli: Cli, background: list[Background], app_dir: Path
) -> None:
    run = start_run(cli, background, app_dir, "app:service", "--workers", "2", workers=2)
    pids = set(ready_workers(run).values())
    publisher = publish(cli, background, app_dir, 5000, slow=50, seconds=60)
    run.wait_stdout("started 50 ")
    run.proc.send_signal(signal.SIGTERM)
    run.wait_stderr("service 'jobs' stopping")  # draining, held up by the slow handler
    assert stop(run) == 130, run.stderr
    assert "SIGTERM received again: killing the workers" in run.stderr
    assert "was killed by SIGKILL" in run.stderr
    assert all(gone(pid) for pid in pids)
    assert "handled 50 " not in run.stdout
    assert stop(publisher) == 0, publisher.stderr
    assert 50 not in confirmed(publisher)


@pytest.mark.slow
def test_a_worker_sigtermed_mid_stream_drains_and_is_replaced(
    cli: Cli, background: list[Background], app_dir: Path
) -> None:
    run = start_run(cli, background, app_dir, "app:service", "--workers", "2", workers=2)
    publisher = publish(cli, background, app_dir, 5000, slow=100)
    run.wait_stdout("started 100 ")
    # The worker handling the slow message: SIGTERMed in the middle of it.
    first = int(re.findall(r"^started 100 (\d+)$", run.stdout, flags=re.MULTILINE)[0])
    slot = next(n for n, pid in ready_workers(run).items() if pid == first)

    os.kill(first, signal.SIGTERM)
    run.wait_for(lambda: ready_workers(run)[slot] != first, f"worker {slot} replaced")
    assert f"worker {slot} (pid {first}) exited with code 0 unexpectedly" in run.stderr
    assert (100, first) in handled(run)  # it finished the message before it exited
    replacement = ready_workers(run)[slot]
    run.wait_for(
        lambda: any(pid == replacement for _, pid in handled(run)), "the new worker handles"
    )
    assert stop(publisher) == 0, publisher.stderr
    assert stop(run) == 0, run.stderr

    done = confirmed(publisher)
    seen = collections.Counter(n for n, _ in handled(run))
    assert "failed" not in publisher.stdout, publisher.stdout  # the other worker was there
    assert 100 in done
    assert done <= set(seen), sorted(done - set(seen))
    assert max(seen.values()) == 1, [n for n, c in seen.items() if c > 1]


@pytest.mark.slow
def test_a_killed_worker_is_restarted_and_the_group_goes_on(
    cli: Cli, background: list[Background], app_dir: Path
) -> None:
    run = start_run(cli, background, app_dir, "app:service", "--workers", "2", workers=2)
    killed = ready_workers(run)[2]
    publisher = publish(cli, background, app_dir, 5000)
    publisher.wait_for(lambda: len(confirmed(publisher)) >= 100, "100 messages confirmed")

    os.kill(killed, signal.SIGKILL)
    run.wait_for(lambda: ready_workers(run)[2] != killed, "worker 2 restarted")
    assert f"worker 2 (pid {killed}) was killed by SIGKILL unexpectedly" in run.stderr
    assert "restarting worker 2 in 0.5s" in run.stderr
    restarted = ready_workers(run)[2]
    run.wait_for(
        lambda: any(pid == restarted for _, pid in handled(run)), "the restarted worker handles"
    )
    assert stop(publisher) == 0, publisher.stderr
    assert stop(run) == 0, run.stderr

    done = confirmed(publisher)
    lines = handled(run)
    seen = collections.Counter(n for n, _ in lines)
    assert "failed" not in publisher.stdout, publisher.stdout
    assert done <= set(seen), sorted(done - set(seen))
    # At least once: the only messages handled twice are some the killed worker had
    # handled without its ack reaching the publisher.
    twice = {n for n, count in seen.items() if count > 1}
    by_killed = {n for n, pid in lines if pid == killed}
    assert twice <= by_killed, sorted(twice - by_killed)


@pytest.mark.slow
def test_a_worker_that_keeps_dying_makes_the_supervisor_give_up(
    cli: Cli, background: list[Background], app_dir: Path
) -> None:
    run = start_run(
        cli, background, app_dir, "app:crashing_soon()", "--workers", "1", "--max-restarts", "2"
    )
    assert run.finish(timeout=60) == 1, run.stderr
    assert run.stderr.count("exited with code 3 unexpectedly") == 3
    assert run.stderr.count(" ready") == 3
    # The backoff doubles.
    assert "restarting worker 1 in 0.5s" in run.stderr
    assert "restarting worker 1 in 1s" in run.stderr
    assert "worker 1 died 3 times within 60s: giving up (--max-restarts 2)" in run.stderr


@pytest.mark.slow
def test_a_worker_that_does_not_drain_in_time_is_killed(
    cli: Cli, background: list[Background], app_dir: Path
) -> None:
    run = start_run(
        cli, background, app_dir, "app:service", "--workers", "1", "--graceful-timeout", "1"
    )
    run.wait_for(lambda: len(ready_workers(run)) == 1, "the worker ready")
    publisher = publish(cli, background, app_dir, 5000, slow=0, seconds=60)
    run.wait_stdout("started 0 ")
    assert stop(run) == 1, run.stderr
    pid = ready_workers(run)[1]
    assert f"worker 1 (pid {pid}) did not stop within 1s: killing it" in run.stderr
    assert f"worker 1 (pid {pid}) was killed by SIGKILL" in run.stderr
    assert "not every worker stopped cleanly" in run.stderr
    assert gone(pid)
    assert stop(publisher) == 0, publisher.stderr


@pytest.mark.slow
def test_workers_stop_by_themselves_when_the_supervisor_is_killed(
    cli: Cli, background: list[Background], app_dir: Path
) -> None:
    run = start_run(cli, background, app_dir, "app:service", "--workers", "2", workers=2)
    pids = list(ready_workers(run).values())
    run.proc.kill()
    run.finish()
    # Nothing to signal them: each sees its channel to the supervisor close, and drains.
    wait_until(lambda: all(gone(pid) for pid in pids), "the orphaned workers exiting")
    assert run.stderr.count("the supervisor went away: stopping gracefully") == 2


def test_memory_broker_refuses_several_workers(cli: Cli, app_dir: Path) -> None:
    result = cli.run(
        "run", "app:service", "--workers", "2", cwd=app_dir, env={"MICRO_BROKER": "memory"}
    )
    assert result.code == 2, result
    assert "the memory broker cannot span processes" in result.err
    result = cli.run("run", "app:service", "-w", "3", "--broker", "memory", cwd=app_dir)
    assert result.code == 2, result
    assert "--workers 3: the memory broker cannot span processes" in result.err


# Reload ------------------------------------------------------------------------------


@pytest.mark.slow
def test_reload_serves_the_changed_code(
    cli: Cli, background: list[Background], app_dir: Path
) -> None:
    run = start_run(cli, background, app_dir, "app:service", "--reload", workers=1)
    assert f"watching {app_dir} for changes to .py files" in run.stderr
    first = ready_workers(run)[1]
    assert call_version(cli) == {"version": 1, "pid": first}

    # Another length as well as other content: the reload must not depend on mtimes.
    (app_dir / "app.py").write_text(APP.format(version=2) + "# changed\n")
    run.wait_stderr("reloaded: 1 worker(s) serve the new code")
    second = ready_workers(run)[1]
    assert second != first
    # New first, then the old one drains and exits.
    assert "app.py changed: starting new workers" in run.stderr
    log = run.stderr
    assert log.index(f"worker 1 (pid {second}) ready") < log.index(
        f"worker 1 (pid {first}) exited with code 0"
    )
    assert gone(first)
    assert call_version(cli) == {"version": 2, "pid": second}

    # Code that does not load leaves the running worker serving.
    (app_dir / "app.py").write_text(APP.format(version=3) + "this is not python(\n")
    run.wait_stderr("the changed code did not start: the previous workers go on serving")
    assert "SyntaxError" in run.stderr
    assert call_version(cli) == {"version": 2, "pid": second}

    (app_dir / "app.py").write_text(APP.format(version=4))
    run.wait_for(lambda: run.stderr.count("reloaded: 1 worker(s)") == 2, "the second reload")
    assert call_version(cli)["version"] == 4
    assert stop(run) == 0, run.stderr


def test_reload_without_watchfiles_names_the_extra(cli: Cli, app_dir: Path, tmp_path: Path) -> None:
    # A watchfiles that cannot be imported, as when the extra is not installed.
    hide = tmp_path / "hide"
    hide.mkdir()
    (hide / "watchfiles.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'watchfiles'\", name='watchfiles')\n"
    )
    result = cli.run("run", "app:service", "--reload", cwd=app_dir, env={"PYTHONPATH": str(hide)})
    assert result.code == 2, result
    assert "--reload needs the watchfiles package" in result.err
    assert "pip install 'microbroker[reload]'" in result.err


# In this process: logging, factories, errors -------------------------------------


def test_log_level_info_shows_what_the_service_serves(
    cli: Cli, background: list[Background], app_dir: Path
) -> None:
    run = start_run(cli, background, app_dir, "app:service", "--log-level", "INFO")
    run.wait_stderr("rpc handler Version: Version.Get")
    assert call_version(cli)["version"] == 1
    assert re.search(
        r"INFO microbroker\.service: service 'jobs' started on the http broker at 127\.0\.0\.1:\d+",
        run.stderr,
    ), run.stderr
    assert "subscriber app.on_job on 'jobs' in queue group 'workers'" in run.stderr
    assert "INFO app: app module loaded (version 1)" in run.stderr  # the app's own logger
    assert stop(run) == 0, run.stderr
    assert "service 'jobs' stopping: running handlers get up to 10s" in run.stderr
    assert "service 'jobs' stopped" in run.stderr


def test_log_level_warning_hides_the_start_up_lines(
    cli: Cli, background: list[Background], app_dir: Path
) -> None:
    run = start_run(cli, background, app_dir, "app:service", "--log-level", "warning")
    assert call_version(cli)["version"] == 1  # it serves
    assert stop(run) == 0, run.stderr
    assert run.stderr == ""


@pytest.mark.slow
def test_a_second_signal_cuts_the_drain_short(
    cli: Cli, background: list[Background], app_dir: Path
) -> None:
    run = start_run(cli, background, app_dir, "app:service")
    run.wait_stderr("service 'jobs' started")
    publisher = publish(cli, background, app_dir, 5000, slow=0, seconds=60)
    run.wait_stdout("started 0 ")
    run.proc.send_signal(signal.SIGTERM)
    run.wait_stderr("service 'jobs' stopping")  # waiting for the slow handler
    assert stop(run) == 130, run.stderr
    assert "SIGTERM received again: stopping at once" in run.stderr
    assert "microbroker run: error: interrupted: stopped before the drain was over" in run.stderr
    assert "handled 0 " not in run.stdout
    assert stop(publisher) == 0, publisher.stderr
    assert 0 not in confirmed(publisher)


def test_a_factory_is_called(cli: Cli, background: list[Background], app_dir: Path) -> None:
    run = start_run(cli, background, app_dir, "app:make_service()")
    run.wait_stderr("service 'made' started")
    assert call_version(cli, "made")["version"] == 1
    assert stop(run) == 0, run.stderr


@pytest.mark.parametrize(
    ("app", "message"),
    [
        ("app", "'app' is not MODULE:ATTRIBUTE (e.g. app:service"),
        ("app:", "'app:' is not MODULE:ATTRIBUTE"),
        ("no_such_module:service", "cannot import 'no_such_module': no module named"),
        (
            "app:nope",
            "'app' has no attribute 'nope'; its microbroker.Service attributes: service",
        ),
        ("app:VERSION", "app:VERSION is a value of type int (1), not a microbroker.Service"),
        ("app:Version", "app:Version is the class Version, not a microbroker.Service"),
        (
            "app:make_service",
            "app:make_service is the function make_service, not a microbroker.Service; "
            "if it returns one, call it: app:make_service()",
        ),
        ("app:VERSION()", "app:VERSION is a value of type int (1), which cannot be called"),
        ("app:Version()", "app:Version() returned a value of type Version"),
        ("broken:service", "importing 'broken' failed: ZeroDivisionError: division by zero"),
    ],
)
def test_a_bad_app_is_a_usage_error(cli: Cli, app_dir: Path, app: str, message: str) -> None:
    (app_dir / "broken.py").write_text("import microbroker\n\nratio = 1 / 0\n")
    result = cli.run("run", app, cwd=app_dir)
    assert result.code == 2, result
    assert f"microbroker run: error: {message}" in result.err, result.err
    if app.startswith("broken"):
        # The app's own traceback, from its file on; not the frames of importlib.
        assert 'broken.py", line 3, in <module>' in result.err
        assert "importlib" not in result.err


def test_a_bad_app_stops_the_supervisor_with_its_exit_code(cli: Cli, app_dir: Path) -> None:
    result = cli.run("run", "app:nope", "--workers", "2", cwd=app_dir)
    assert result.code == 2, result
    assert "'app' has no attribute 'nope'" in result.err
    assert "before it was ready" in result.err
    assert "the app did not start: stopping" in result.err


def test_app_dir_and_other_usage_errors(cli: Cli, app_dir: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = cli.run("run", "app:nope", "--app-dir", str(app_dir), cwd=elsewhere)
    assert result.code == 2, result
    assert "'app' has no attribute 'nope'" in result.err  # found app.py in --app-dir

    result = cli.run("run", "app:service", "-o", "max_batch=8", cwd=app_dir)
    assert result.code == 2, result
    assert "--option cannot reach the broker of `run`" in result.err

    result = cli.run("run", "app:service", "--reload-dir", ".", cwd=app_dir)
    assert result.code == 2, result
    assert "--reload-dir only has a use with --reload" in result.err

    result = cli.run("run", "app:service", "--workers", "0", cwd=app_dir)
    assert result.code == 2, result
    assert "must be 1 or more" in result.err


def test_broker_the_app_chose_itself_is_not_overridden_silently(cli: Cli, app_dir: Path) -> None:
    (app_dir / "fixed.py").write_text(
        textwrap.dedent(
            """\
            import microbroker

            service = microbroker.Service("fixed", broker=microbroker.get_broker("memory"))
            """
        )
    )
    result = cli.run("run", "fixed:service", "--broker", "http", cwd=app_dir)
    assert result.code == 2, result
    assert "--broker http: service 'fixed' uses the memory broker it was given in the app" in (
        result.err
    )


def test_an_unreachable_broker_exits_3(cli: Cli, app_dir: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        result = cli.run("run", "app:service", "--address", address, cwd=app_dir)
    assert result.code == 3, result
    assert f"cannot connect to the http broker at {address}" in result.err


def test_a_fixed_http_port_cannot_serve_two_workers(cli: Cli, app_dir: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{probe.getsockname()[1]}"
    # The first worker listens there; the second cannot, and the supervisor stops.
    result = cli.run("run", "app:service", "--workers", "2", "--address", address, cwd=app_dir)
    assert result.code == 3, result
    assert "address already in use" in result.err.lower()
    assert "exited with code 3 before it was ready" in result.err


def test_a_service_that_does_not_start_exits_1(cli: Cli, app_dir: Path) -> None:
    (app_dir / "failing.py").write_text(
        textwrap.dedent(
            """\
            import microbroker

            class Failing(microbroker.Service):
                async def start(self) -> None:
                    raise RuntimeError("no database")

            service = Failing("failing")
            """
        )
    )
    result = cli.run("run", "failing:service", cwd=app_dir)
    assert result.code == 1, result
    assert "microbroker run: error: service 'failing' did not start: no database" in result.err
