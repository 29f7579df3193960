"""Opening a directory that no other local user can redirect: the ``local`` registry's checks.

A directory is safe for the registry when nobody but this user and root can
change where its path leads, or what is in it: every directory and symbolic
link on the path belongs to root or to this user, every directory passed
through is closed to others' writes or sticky (as ``/tmp``: others cannot
rename what they do not own in it), and the directory itself belongs to this
user and is closed to others' writes. :func:`open_private_dir` checks that
one component at a time on the very descriptors it then uses, so that a
rename or a symbolic link swapped in between cannot redirect it.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

UID: int | None = os.getuid() if hasattr(os, "getuid") else None
O_DIRECTORY: int = getattr(os, "O_DIRECTORY", 0)
O_NOFOLLOW: int = getattr(os, "O_NOFOLLOW", 0)
O_NONBLOCK: int = getattr(os, "O_NONBLOCK", 0)
POSIX = (
    UID is not None
    and bool(O_DIRECTORY and O_NOFOLLOW)
    and {os.open, os.stat, os.mkdir, os.unlink, os.rename, os.readlink} <= os.supports_dir_fd
    and os.listdir in os.supports_fd
)
DIR_FLAGS = os.O_RDONLY | O_DIRECTORY | O_NOFOLLOW
# O_NONBLOCK: a FIFO in place of a record must not block the reader on open().
FILE_FLAGS = os.O_RDONLY | O_NOFOLLOW | O_NONBLOCK
WRITE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | O_NOFOLLOW
_MAX_LINKS = 40  # as Linux's limit on symbolic links in one path


class UnsafeDirectory(Exception):
    """A directory on the registry's path fails a check; ``fixable`` when ``chmod 700`` fixes it."""

    def __init__(self, message: str, *, fixable: str | None = None) -> None:
        super().__init__(message)
        self.fixable = fixable


def mode(st: os.stat_result) -> str:
    """The permission bits of ``st`` as messages show them: ``0777``, ``1777``."""
    return f"{stat.S_IMODE(st.st_mode):04o}"


def _check_owner(st: os.stat_result, shown: str) -> None:
    """A directory or link on the way: root's or ours, or its owner could redirect us."""
    if st.st_uid not in (0, UID):
        kind = "a symbolic link" if stat.S_ISLNK(st.st_mode) else "a directory"
        raise UnsafeDirectory(
            f"{shown} is {kind} of uid {st.st_uid} (mode {mode(st)}), not of this user "
            f"(uid {UID}) or root: its owner can replace what it leads to"
        )


def _check_passage(st: os.stat_result, shown: str) -> None:
    """A directory passed through: if others can write to it, it must be sticky (as /tmp)."""
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not st.st_mode & stat.S_ISVTX:
        raise UnsafeDirectory(
            f"{shown} (owner uid {st.st_uid}, mode {mode(st)}) can be written by other "
            "users and is not sticky: they can rename or replace what is in it"
        )


def check_private(st: os.stat_result, shown: str) -> None:
    """A directory the registry keeps records in: ours, and closed to others' writes."""
    if st.st_uid != UID:
        raise UnsafeDirectory(
            f"{shown} belongs to uid {st.st_uid} (mode {mode(st)}), not to this user "
            f"(uid {UID}): its owner can plant nodes in it"
        )
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise UnsafeDirectory(
            f"{shown} (owner uid {st.st_uid}, mode {mode(st)}) can be written by other "
            "users: they can plant nodes in it",
            fixable=shown,
        )


def _parts(path: str) -> list[str]:
    return [p for p in path.split("/") if p and p != "."]


def open_private_dir(path: Path, *, create: bool) -> int:
    """Open directory ``path`` for the registry, checking every step; return its descriptor.

    Walks from ``/`` one component at a time with ``openat(O_NOFOLLOW)``,
    following symbolic links by hand, so that every directory and link on the
    way is checked on the descriptor that is used next: each belongs to root
    or to this user, and each directory looked into is closed to others'
    writes or sticky. The last directory must be private
    (:func:`check_private`). Missing directories are made ``0700`` when
    ``create``. Raises :class:`UnsafeDirectory` or ``OSError``.
    """
    text = os.fspath(path)
    if not text.startswith("/"):
        text = os.path.join(os.getcwd(), text)
    todo = _parts(text)
    todo.reverse()
    root = os.open("/", DIR_FLAGS)
    # The directories entered so far, each with its stat and its name for messages;
    # ".." leaves the last one, as the kernel does (the physical parent).
    stack: list[tuple[int, os.stat_result, str]] = [(root, os.fstat(root), "/")]
    links = 0
    try:
        _check_owner(stack[0][1], "/")
        while todo:
            name = todo.pop()
            if name == "..":
                if len(stack) > 1:
                    os.close(stack.pop()[0])
                continue
            here, here_st, here_shown = stack[-1]
            _check_passage(here_st, here_shown)
            where = os.path.join(here_shown, name)
            try:
                fd = os.open(name, DIR_FLAGS, dir_fd=here)
            except FileNotFoundError:
                if not create:
                    raise
                with contextlib.suppress(FileExistsError):
                    os.mkdir(name, 0o700, dir_fd=here)
                fd = os.open(name, DIR_FLAGS, dir_fd=here)
            except OSError as exc:
                # A symbolic link (ELOOP, or ENOTDIR with O_DIRECTORY), a file, or a
                # directory we may not open: lstat says which.
                entry = os.stat(name, dir_fd=here, follow_symlinks=False)
                _check_owner(entry, where)
                if not stat.S_ISLNK(entry.st_mode):
                    if not stat.S_ISDIR(entry.st_mode):
                        raise UnsafeDirectory(f"{where} is not a directory") from exc
                    raise
                links += 1
                if links > _MAX_LINKS:
                    raise UnsafeDirectory(f"{text}: too many symbolic links") from exc
                target = os.readlink(name, dir_fd=here)
                if target.startswith("/"):
                    while len(stack) > 1:
                        os.close(stack.pop()[0])
                more = _parts(target)
                more.reverse()
                todo.extend(more)
                continue
            st = os.fstat(fd)
            stack.append((fd, st, where))
            _check_owner(st, where)
        fd, st, shown = stack[-1]
        check_private(st, shown)
        stack.pop()
        return fd
    finally:
        for entered, _, _ in stack:
            os.close(entered)


def refusal(path: Path, exc: BaseException) -> str:
    """The message of a refused directory: what is wrong, and what to do."""
    if isinstance(exc, UnsafeDirectory):
        if exc.fixable is not None:
            fix = (
                f"Fix it with 'chmod 700 {exc.fixable}' or point MICRO_REGISTRY_ADDRESS "
                "at a directory you own."
            )
        else:
            fix = (
                "Point MICRO_REGISTRY_ADDRESS at a directory you own whose parents only you "
                "and root can change."
            )
        return (
            f"cannot use {path} as the local registry: {exc}. Anyone who can change the "
            f"registry's directory can redirect messages. {fix}"
        )
    return (
        f"cannot use {path} as the local registry: {exc}. "
        "Set MICRO_REGISTRY_ADDRESS to a directory you own."
    )
