"""The ``local`` registry, the default: the processes of one user on one machine, nothing to set up.

Each node is one small JSON file in a private directory::

    $XDG_RUNTIME_DIR/microbroker/registry/<service>/<node>.json     (when XDG_RUNTIME_DIR is set)
    <tempdir>/microbroker-<uid>/registry/<service>/<node>.json      (otherwise)

or under the directory given as ``address`` (``MICRO_REGISTRY_ADDRESS``).
Files are written to a temporary name and renamed into place, so that a
reader never sees half a record.

Whoever can change that directory, or a directory on the way to it, can
redirect messages: plant nodes of their own, or swap the directory for
theirs. So the registry trusts a directory only when nobody but this user
and root can change where its path leads (every directory and link on the
way is root's or the user's; one that others may write to must be sticky,
as ``/tmp`` is) and the directory, each ``<service>/`` directory in it and
each record are the user's and closed to others' writes (those it creates
are ``0700`` and ``0600``; symbolic links there are not followed; a record
that fails is ignored with a warning, a directory is refused with a
:class:`~microbroker.registries.RegistryError` that names it, its owner and
mode, and what to do). The checks are made on the file descriptors then
used (``openat``, ``O_NOFOLLOW``), so that a rename or a link swapped in
between cannot redirect the registry. Before each use it checks that its
path still leads to the directory it checked; when not (the directory was
removed and made again, say by a cleaner of ``/tmp`` and then by another
user) it resolves the path again, with every check, or refuses.

When the default directory is unsafe (another user made
``<tempdir>/microbroker-<uid>`` first), the registry uses
:func:`fallback_directory`, in the user's home, and logs a warning. The
processes of one user agree on it: the fallback is used whenever it exists,
and made only when the default is unsafe. Remove it to go back to the
default. A given ``address`` has no fallback: it is refused.

A record holds the service, the node, an expiry time and the pid (and
process start time) of the process that wrote it. A node drops out of
lookups when:

- it is deregistered (the file is removed);
- its process is gone: a lookup on the same host checks the pid and its
  start time (so a reused pid does not count) at most every
  ``liveness_interval`` seconds (0.5 s by default). A process killed with
  ``kill -9`` is therefore out of lookups within about half a second;
- its TTL runs out (``DEFAULT_TTL``, 15 s, unless renewed): the bound when
  the process cannot be checked (another host sharing the directory, a
  stopped rather than dead process).

Readers delete the records they find dead or expired. The registry needs
POSIX (``openat``, ``O_NOFOLLOW``); elsewhere it refuses to start.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import secrets
import socket
import stat
import tempfile
import time
import weakref
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

from ._base import DEFAULT_TTL, Node, Registry, RegistryError, Service
from ._private_dir import (
    DIR_FLAGS,
    FILE_FLAGS,
    POSIX,
    UID,
    WRITE_FLAGS,
    UnsafeDirectory,
    check_private,
    mode,
    open_private_dir,
    refusal,
)

logger = logging.getLogger("microbroker.registries.local")

_HOST = socket.gethostname()


def default_directory() -> Path:
    """Where the ``local`` registry keeps its records when no address is given.

    The registry moves to :func:`fallback_directory` when this one is unsafe
    or the fallback exists; :attr:`LocalRegistry.directory` tells which one a
    registry uses.
    """
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isdir(runtime) and os.access(runtime, os.W_OK):
        return Path(runtime) / "microbroker" / "registry"
    user = str(UID) if UID is not None else os.environ.get("USERNAME", "user")
    return Path(tempfile.gettempdir()) / f"microbroker-{user}" / "registry"


def fallback_directory() -> Path | None:
    """Where the ``local`` registry goes when :func:`default_directory` is unsafe.

    ``~/.cache/microbroker/registry-<host>`` (one per host, for homes shared
    over the network); ``None`` when there is no home directory. While it
    exists, every process of the user uses it, so that they agree.
    """
    try:
        home = Path.home()
    except (RuntimeError, KeyError):
        return None
    return home / ".cache" / "microbroker" / f"registry-{quote(_HOST, safe='') or 'host'}"


def _process_start(pid: int) -> str | None:
    """The start time of process ``pid`` (Linux), to tell a reused pid from the original."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    fields = data[data.rfind(b")") + 2 :].split()
    return fields[19].decode() if len(fields) > 19 else None


_PID = os.getpid()
_START = _process_start(_PID)


def _alive(pid: int, start: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return True
    if start is not None:
        current = _process_start(pid)
        if current is not None and current != start:
            return False
    return True


def _same(a: os.stat_result, b: os.stat_result) -> bool:
    return a.st_dev == b.st_dev and a.st_ino == b.st_ino


class _DirCache:
    __slots__ = ("checked", "expires", "identity", "services")

    def __init__(
        self,
        identity: tuple[int, int, int],
        checked: float,
        expires: float,
        services: list[Service],
    ) -> None:
        self.identity = identity
        self.checked = checked
        self.expires = expires
        self.services = services


class LocalRegistry(Registry):
    """A registry in a private directory shared by the processes of one user. See the module."""

    name = "local"

    def __init__(
        self,
        address: str | os.PathLike[str] | None = None,
        *,
        ttl: float = DEFAULT_TTL,
        liveness_interval: float = 0.5,
    ) -> None:
        """Create a local registry.

        :param address: the directory to keep records in (default: see
            :func:`default_directory` and :func:`fallback_directory`);
            created private if missing. Refused, with a
            :class:`~microbroker.registries.RegistryError`, when it or a
            directory on the way to it is not safe (see the module).
        :param ttl: seconds a registration lives when ``register`` is given no TTL.
        :param liveness_interval: at most how often (seconds) a lookup checks
            that the processes behind the nodes still run.
        """
        if not POSIX:
            raise RegistryError(
                "the local registry needs a POSIX system (openat, O_NOFOLLOW, uids) to keep "
                "other users out of its directory; choose another registry with MICRO_REGISTRY"
            )
        self._address = Path(address) if address else None
        self.ttl = ttl
        self.liveness_interval = liveness_interval
        self._cache: dict[str, _DirCache] = {}
        # What this registry wrote: written again when the directory is replaced.
        self._own: dict[tuple[str, str], tuple[float, bytes]] = {}
        self._warned: set[str] = set()
        self._fd = -1
        self._closer: weakref.finalize[[int], LocalRegistry] | None = None
        self.directory: Path
        """The directory in use (after the fallback, if the default was unsafe)."""
        self.directory, fd = self._resolve()
        self._hold(fd)

    # The directory -------------------------------------------------------------------

    def _resolve(self) -> tuple[Path, int]:
        """Find and open the directory to use (the fallback rule of the module docstring)."""
        if self._address is not None:
            try:
                return self._address, open_private_dir(self._address, create=True)
            except (UnsafeDirectory, OSError) as exc:
                raise RegistryError(refusal(self._address, exc)) from exc
        primary = default_directory()
        fallback = fallback_directory()
        problems: list[tuple[Path, BaseException]] = []
        if fallback is not None and os.path.lexists(fallback):
            try:
                return fallback, open_private_dir(fallback, create=False)
            except (UnsafeDirectory, OSError) as exc:
                problems.append((fallback, exc))
        try:
            return primary, open_private_dir(primary, create=True)
        except (UnsafeDirectory, OSError) as exc:
            problems.append((primary, exc))
        if fallback is not None and len(problems) == 1:
            try:
                fd = open_private_dir(fallback, create=True)
            except (UnsafeDirectory, OSError) as exc:
                problems.append((fallback, exc))
            else:
                logger.warning(
                    "the local registry's default directory %s is unsafe (%s); using %s "
                    "instead. Every process of this user uses it while it exists: remove it "
                    "to go back to the default once that is safe.",
                    primary,
                    problems[0][1],
                    fallback,
                )
                return fallback, fd
        reasons = "; ".join(f"{path}: {exc}" for path, exc in problems)
        raise RegistryError(
            f"the local registry has no safe directory ({reasons}). Anyone who can change "
            "the registry's directory can redirect messages. Set XDG_RUNTIME_DIR to a "
            "private directory of yours (mode 0700), or MICRO_REGISTRY_ADDRESS to a "
            "directory you own whose parents only you and root can change."
        ) from problems[-1][1]

    def _hold(self, fd: int) -> None:
        if self._closer is not None:
            self._closer()
        self._fd = fd
        self._closer = weakref.finalize(self, os.close, fd)

    def _root(self) -> int:
        """The directory's descriptor, once checked that the path still leads to it.

        When it does not (removed, replaced, or the fallback appeared), resolve
        again, with every check, and switch: a lookup never reads a directory
        that was swapped after it was checked.
        """
        fd = self._fd
        if fd >= 0:
            try:
                held = os.fstat(fd)
                now = os.stat(self.directory)
            except OSError:
                pass
            else:
                if _same(held, now) and not self._fallback_appeared():
                    try:
                        check_private(held, str(self.directory))
                    except UnsafeDirectory as exc:
                        raise RegistryError(refusal(self.directory, exc)) from exc
                    return fd
        old = self.directory
        self.directory, fd = self._resolve()
        reopened = self._fd >= 0
        self._hold(fd)
        self._cache.clear()
        if reopened:
            logger.warning(
                "the local registry directory %s was removed, replaced or superseded by "
                "the fallback since it was checked; now using %s",
                old,
                self.directory,
            )
        self._write_own(fd)
        return fd

    def _fallback_appeared(self) -> bool:
        if self._address is not None:
            return False
        fallback = fallback_directory()
        return fallback is not None and fallback != self.directory and os.path.lexists(fallback)

    def _forget_expired(self) -> None:
        now = time.time()
        for key in [key for key, (expires, _) in self._own.items() if expires <= now]:
            del self._own[key]

    def _write_own(self, root: int) -> None:
        """Write this registry's live records into a new directory."""
        self._forget_expired()
        for (entry, file), (_, data) in list(self._own.items()):
            try:
                service_fd = self._service_fd(root, entry, create=True)
                assert service_fd is not None  # create=True never answers None
                try:
                    self._write(service_fd, file, data)
                finally:
                    os.close(service_fd)
            except (OSError, RegistryError) as exc:
                logger.warning("the local registry could not rewrite %s/%s: %s", entry, file, exc)

    async def close(self) -> None:
        """Release the directory's descriptor; a later call opens (and checks) it again."""
        if self._closer is not None:
            self._closer()
            self._closer = None
        self._fd = -1

    # Files ---------------------------------------------------------------------------

    @staticmethod
    def _entry(name: str) -> str:
        return quote(name, safe="") or "%00"

    @staticmethod
    def _node_file(version: str, node_id: str) -> str:
        digest = hashlib.sha256(f"{version}\0{node_id}".encode()).hexdigest()[:40]
        return f"{digest}.json"

    def _service_fd(self, root: int, entry: str, *, create: bool) -> int | None:
        """Open the ``<service>/`` directory ``entry``, private and ours; ``None`` if missing."""
        where = self.directory / entry
        try:
            fd = os.open(entry, DIR_FLAGS, dir_fd=root)
        except FileNotFoundError:
            if not create:
                return None
            with contextlib.suppress(FileExistsError):
                os.mkdir(entry, 0o700, dir_fd=root)
            found = self._service_fd(root, entry, create=False)
            if found is None:
                raise RegistryError(f"{where} vanished as soon as it was made") from None
            return found
        except OSError as exc:
            try:
                st = os.stat(entry, dir_fd=root, follow_symlinks=False)
            except OSError:
                raise RegistryError(f"cannot open {where}: {exc}") from exc
            what = "a symbolic link" if stat.S_ISLNK(st.st_mode) else "not a directory"
            raise RegistryError(
                f"{where} is {what} (owner uid {st.st_uid}, mode {mode(st)}): the local "
                "registry does not follow it, since it could lead to another user's "
                f"directory. Remove it ('rm {where}')."
            ) from exc
        try:
            check_private(os.fstat(fd), str(where))
        except UnsafeDirectory as exc:
            os.close(fd)
            raise RegistryError(refusal(where, exc)) from exc
        return fd

    @staticmethod
    def _write(directory: int, file: str, data: bytes) -> None:
        tmp = f".tmp-{secrets.token_hex(8)}"
        fd = os.open(tmp, WRITE_FLAGS, 0o600, dir_fd=directory)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            # POSIX rename replaces the target atomically (os.replace is the same call).
            os.rename(tmp, file, src_dir_fd=directory, dst_dir_fd=directory)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=directory)
            raise

    async def register(self, service: Service, *, ttl: float | None = None) -> None:
        root = self._root()
        entry = self._entry(service.name)
        directory = self._service_fd(root, entry, create=True)
        assert directory is not None  # create=True never answers None
        if len(self._own) > 256:
            self._forget_expired()
        expires = time.time() + (self.ttl if ttl is None else ttl)
        try:
            for node in service.nodes:
                record = {
                    "service": {
                        "name": service.name,
                        "version": service.version,
                        "metadata": service.metadata,
                    },
                    "node": node.to_json(),
                    "expires": expires,
                    "host": _HOST,
                    "pid": _PID,
                    "start": _START,
                }
                data = json.dumps(record, separators=(",", ":")).encode()
                file = self._node_file(service.version, node.id)
                self._write(directory, file, data)
                self._own[(entry, file)] = (expires, data)
        finally:
            os.close(directory)
        self._cache.pop(service.name, None)

    async def deregister(self, service: Service) -> None:
        entry = self._entry(service.name)
        files = [self._node_file(service.version, node.id) for node in service.nodes]
        for file in files:
            self._own.pop((entry, file), None)
        directory = self._service_fd(self._root(), entry, create=False)
        self._cache.pop(service.name, None)
        if directory is None:
            return
        try:
            for file in files:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(file, dir_fd=directory)
        finally:
            os.close(directory)

    async def get_service(self, name: str) -> list[Service]:
        entry = self._entry(name)
        directory = self._service_fd(self._root(), entry, create=False)
        if directory is None:
            self._cache.pop(name, None)
            return []
        try:
            st = os.fstat(directory)
            identity = (st.st_dev, st.st_ino, st.st_mtime_ns)
            now = time.time()
            cached = self._cache.get(name)
            if (
                cached is not None
                and cached.identity == identity
                and now < cached.expires
                and now - cached.checked < self.liveness_interval
            ):
                return cached.services
            services, expires = self._scan(directory, entry, now)
        finally:
            os.close(directory)
        self._cache[name] = _DirCache(identity, now, expires, services)
        return services

    async def list_services(self) -> list[Service]:
        services = []
        for entry in sorted(os.listdir(self._root())):
            services.extend(await self.get_service(unquote(entry)))
        return services

    def _read(self, directory: int, entry: str, file: str) -> bytes | None:
        """The bytes of record ``file`` if it is a regular file of ours that others cannot write."""
        try:
            fd = os.open(file, FILE_FLAGS, dir_fd=directory)
        except FileNotFoundError:
            return None
        except OSError as exc:
            self._warn(entry, file, f"cannot be opened as a plain file ({exc.strerror})")
            return None
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                self._warn(entry, file, "is not a regular file")
                return None
            if st.st_uid != UID or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
                self._warn(
                    entry,
                    file,
                    f"belongs to uid {st.st_uid} with mode {mode(st)}: only records of "
                    f"this user (uid {UID}) that others cannot write to are trusted",
                )
                return None
            return f.read()

    def _warn(self, entry: str, file: str, problem: str) -> None:
        path = str(self.directory / entry / file)
        if path not in self._warned:
            self._warned.add(path)
            logger.warning("the local registry ignores %s: it %s", path, problem)

    def _scan(self, directory: int, entry: str, now: float) -> tuple[list[Service], float]:
        by_version: dict[str, Service] = {}
        soonest = float("inf")
        for file in os.listdir(directory):
            if not file.endswith(".json"):
                continue
            data = self._read(directory, entry, file)
            if data is None:
                continue
            try:
                record: dict[str, Any] = json.loads(data)
                expires = float(record["expires"])
                svc = record["service"]
                node = Node.from_json(record["node"])
                pid = int(record["pid"]) if record.get("pid") is not None else None
            except (ValueError, KeyError, TypeError):
                # A record that is not ours or is damaged: ignore it rather than fail lookups.
                continue
            dead = expires <= now or (
                pid is not None
                and record.get("host") == _HOST
                and not _alive(pid, record.get("start"))
            )
            if dead:
                with contextlib.suppress(OSError):
                    os.unlink(file, dir_fd=directory)
                continue
            soonest = min(soonest, expires)
            version = str(svc.get("version") or "")
            service = by_version.get(version)
            if service is None:
                service = by_version[version] = Service(
                    str(svc["name"]), version, dict(svc.get("metadata") or {}), []
                )
            service.nodes.append(node)
        return list(by_version.values()), soonest
