"""The ``local`` registry, the default: the processes of one user on one machine, nothing to set up.

Each node is one small JSON file in a private directory::

    $XDG_RUNTIME_DIR/microbroker/registry/<service>/<node>.json     (when XDG_RUNTIME_DIR is set)
    <tempdir>/microbroker-<uid>/registry/<service>/<node>.json      (otherwise)

or under the directory given as ``address`` (``MICRO_REGISTRY_ADDRESS``).
Files are written to a temporary name and renamed into place, so that a
reader never sees half a record. The directory must belong to the user and
be closed to others (mode 0700): whoever can write in it can redirect
messages, so the registry refuses a directory that is not private.

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

Readers delete the records they find dead or expired.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import stat
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

from ._base import DEFAULT_TTL, Node, Registry, RegistryError, Service

_HOST = socket.gethostname()


def default_directory() -> Path:
    """Where the ``local`` registry keeps its records when no address is given."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isdir(runtime) and os.access(runtime, os.W_OK):
        return Path(runtime) / "microbroker" / "registry"
    user = str(os.getuid()) if hasattr(os, "getuid") else os.environ.get("USERNAME", "user")
    return Path(tempfile.gettempdir()) / f"microbroker-{user}" / "registry"


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


class _DirCache:
    __slots__ = ("checked", "expires", "mtime", "services")

    def __init__(self, mtime: int, checked: float, expires: float, services: list[Service]):
        self.mtime = mtime
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
            :func:`default_directory`); created private if missing.
        :param ttl: seconds a registration lives when ``register`` is given no TTL.
        :param liveness_interval: at most how often (seconds) a lookup checks
            that the processes behind the nodes still run.
        """
        self.directory = Path(address) if address else default_directory()
        self.ttl = ttl
        self.liveness_interval = liveness_interval
        self._cache: dict[str, _DirCache] = {}
        self._ensure(self.directory)

    # Files ---------------------------------------------------------------------------

    def _ensure(self, directory: Path) -> None:
        try:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            info = directory.stat()
        except OSError as exc:
            raise RegistryError(
                f"cannot use {directory} as the local registry: {exc}. "
                "Set MICRO_REGISTRY_ADDRESS to a directory you own."
            ) from exc
        if hasattr(os, "getuid") and (
            info.st_uid != os.getuid() or stat.S_IMODE(info.st_mode) & 0o022
        ):
            raise RegistryError(
                f"the local registry directory {directory} is not private to this user "
                f"(owner uid {info.st_uid}, mode {stat.S_IMODE(info.st_mode):o}): anyone who "
                f"can write there can redirect messages. Fix it with 'chmod 700 {directory}' "
                "or point MICRO_REGISTRY_ADDRESS at a directory you own."
            )

    def _service_dir(self, name: str) -> Path:
        return self.directory / (quote(name, safe="") or "%00")

    @staticmethod
    def _node_file(version: str, node_id: str) -> str:
        digest = hashlib.sha256(f"{version}\0{node_id}".encode()).hexdigest()[:40]
        return f"{digest}.json"

    async def register(self, service: Service, *, ttl: float | None = None) -> None:
        directory = self._service_dir(service.name)
        if not directory.is_dir():
            self._ensure(directory)
        expires = time.time() + (self.ttl if ttl is None else ttl)
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
            target = directory / self._node_file(service.version, node.id)
            fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                os.replace(tmp, target)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
        self._cache.pop(service.name, None)

    async def deregister(self, service: Service) -> None:
        directory = self._service_dir(service.name)
        for node in service.nodes:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(directory / self._node_file(service.version, node.id))
        self._cache.pop(service.name, None)

    async def get_service(self, name: str) -> list[Service]:
        directory = self._service_dir(name)
        try:
            mtime = directory.stat().st_mtime_ns
        except FileNotFoundError:
            return []
        now = time.time()
        cached = self._cache.get(name)
        if (
            cached is not None
            and cached.mtime == mtime
            and now < cached.expires
            and now - cached.checked < self.liveness_interval
        ):
            return cached.services
        services, expires = self._scan(directory, now)
        self._cache[name] = _DirCache(mtime, now, expires, services)
        return services

    async def list_services(self) -> list[Service]:
        services = []
        try:
            names = sorted(os.listdir(self.directory))
        except FileNotFoundError:
            return []
        for entry in names:
            services.extend(await self.get_service(unquote(entry)))
        return services

    def _scan(self, directory: Path, now: float) -> tuple[list[Service], float]:
        by_version: dict[str, Service] = {}
        soonest = float("inf")
        try:
            entries = os.listdir(directory)
        except FileNotFoundError:
            return [], soonest
        for entry in entries:
            if not entry.endswith(".json"):
                continue
            path = directory / entry
            try:
                record: dict[str, Any] = json.loads(path.read_bytes())
                expires = float(record["expires"])
                svc = record["service"]
                node = Node.from_json(record["node"])
                pid = int(record["pid"]) if record.get("pid") is not None else None
            except FileNotFoundError:
                continue
            except (OSError, ValueError, KeyError, TypeError):
                # A record that is not ours or is damaged: ignore it rather than fail lookups.
                continue
            dead = expires <= now or (
                pid is not None
                and record.get("host") == _HOST
                and not _alive(pid, record.get("start"))
            )
            if dead:
                with contextlib.suppress(OSError):
                    os.unlink(path)
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
