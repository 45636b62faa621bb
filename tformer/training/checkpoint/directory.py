"""The checkpoint directory as a whole: committed by renames, recovered after a kill, locked by
its writer, and read consistently while a writer commits.

A save never touches the previous checkpoint until the new one is complete: every file is written
(and flushed to disk) into a sibling directory ``.NAME.tmp-PID-XXXX``; then the old directory is
renamed to ``.NAME.old-PID-XXXX``, the new one to ``NAME``, and the old one removed. A kill at any
moment leaves either the old or the new checkpoint; if it lands between the two renames, the next
reader or writer renames the old one back (:func:`recover`) and removes what a dead writer left.
A committed directory is never changed afterwards, so a reader that saw the same directory before
and after reading has read the files of one save (:func:`read_consistently`).
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

from tformer.training.checkpoint.files import OWN_FILES, STATE, _fsync, read_json

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; a second writer is not detected there
    fcntl = None

T = TypeVar("T")
_HELD: dict[Path, int] = {}  # lock files this process holds, with their nesting depth
_LEFTOVER = re.compile(r"^\.(?P<name>.+)\.(?P<kind>tmp|old)-(?P<pid>\d+)-[0-9a-f]+$")


class CheckpointLocked(RuntimeError):
    """Another process holds the lock of a checkpoint directory."""


def _plain(directory: str | os.PathLike) -> Path:
    """An absolute path with a non-empty last component (a symlink to a directory is followed, so
    the swap renames the real directory, never the link)."""
    if str(directory) == "":
        raise ValueError("the checkpoint directory is '' (empty); give a directory name")
    path = Path(os.path.abspath(directory))
    if path.is_symlink():
        path = path.resolve()
    if path.name == "":
        raise ValueError(f"{directory} cannot be a checkpoint directory (it is the root of the file system)")
    return path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _leftovers(directory: Path) -> list[tuple[str, int, Path]]:
    """``(kind, pid, path)`` of the ``.NAME.tmp-*`` / ``.NAME.old-*`` siblings of ``directory``."""
    try:
        names = os.listdir(directory.parent)
    except OSError:
        return []
    out = []
    for name in names:
        m = _LEFTOVER.match(name)
        if m and m["name"] == directory.name:
            out.append((m["kind"], int(m["pid"]), directory.parent / name))
    return out


def recover(directory: str | os.PathLike, wait: float = 5.0) -> Path:
    """Finish what a killed save left: if ``directory`` is missing but a dead writer's previous
    checkpoint (``.NAME.old-*``) is there, rename it back; remove dead writers' temporary
    directories. Returns the (absolute) directory. Called by every load and save."""
    directory = _plain(directory)
    deadline = time.monotonic() + wait
    while True:
        leftovers = _leftovers(directory)
        if not leftovers:
            return directory
        if not directory.exists():
            olds = sorted((p for kind, pid, p in leftovers if kind == "old" and not _alive(pid)),
                          key=lambda p: p.stat().st_mtime, reverse=True)
            for old in olds:
                with contextlib.suppress(OSError):
                    os.rename(old, directory)
                    _fsync(directory.parent)
                    break
        if not directory.exists() and any(k == "old" for k, _, _ in leftovers) and time.monotonic() < deadline:
            time.sleep(0.02)  # a live writer is between its two renames: a few microseconds
            continue
        for _kind, pid, path in leftovers:
            if path.exists() and not _alive(pid):
                shutil.rmtree(path, ignore_errors=True)
        return directory


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _commit(tmp: Path, directory: Path) -> None:
    """Put the complete directory ``tmp`` in place of ``directory``, keeping the old one until then."""
    _fsync(tmp)
    if not directory.exists():
        os.rename(tmp, directory)
        _fsync(directory.parent)
        return
    old = directory.parent / f".{directory.name}.old-{os.getpid()}-{secrets.token_hex(4)}"
    os.rename(directory, old)
    try:
        os.rename(tmp, directory)
    except BaseException:
        if not directory.exists():
            os.rename(old, directory)
        raise
    _fsync(directory.parent)
    shutil.rmtree(old, ignore_errors=True)


def _keep_foreign_files(old: Path, new: Path) -> None:
    """Hard-link (or copy) into ``new`` what ``old`` holds beyond its checkpoint's own files."""
    try:
        owned = set(read_json(old / STATE).get("files", {})) | {STATE}
    except (OSError, ValueError, AttributeError):
        owned = set(OWN_FILES)
    for entry in os.scandir(old):
        stale = entry.name.startswith(".") and entry.name.endswith(".tmp")  # an older version's killed write
        if entry.name in owned or stale or (new / entry.name).exists():
            continue
        if entry.is_dir(follow_symlinks=False):
            shutil.copytree(entry.path, new / entry.name, symlinks=True, copy_function=_link_or_copy)
        elif entry.is_symlink():
            os.symlink(os.readlink(entry.path), new / entry.name)
        else:
            _link_or_copy(entry.path, str(new / entry.name))


def check_committable(directory: str | os.PathLike) -> Path:
    """Refuse, before any training, a directory that a rename-based commit could never replace:
    the current directory or one of its parents (the shell standing in it would be left in a
    deleted directory), a mount point, or a place whose parent cannot hold a sibling directory
    (renamed across file systems). Creates nothing that stays: a probe directory is renamed and
    removed."""
    path = _plain(directory)
    cwd = Path(os.path.abspath(os.getcwd()))
    if path == cwd or path in cwd.parents:
        raise ValueError(f"{directory} is the current directory or one of its parents; a save replaces the "
                         "checkpoint directory as a whole, so give a new subdirectory, e.g. runs/zh-en")
    if path.is_dir() and os.path.ismount(path):
        raise ValueError(f"{directory} is a mount point; a save replaces the checkpoint directory by "
                         "renaming it, which a mount point refuses, so give a subdirectory of it")
    if path.is_dir():
        try:
            parent_dev = path.parent.stat().st_dev
        except OSError:
            parent_dev = None
        if parent_dev is not None and path.stat().st_dev != parent_dev:
            raise ValueError(f"{directory} lies on another file system than its parent {path.parent}; a "
                             "save renames a sibling directory into its place, which cannot cross file "
                             "systems, so give a subdirectory of it")
    parent = path.parent
    parent.mkdir(parents=True, exist_ok=True)
    probe = parent / f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    moved = probe.with_name(probe.name + "0")
    try:
        os.mkdir(probe)
        os.rename(probe, moved)
    except OSError as error:
        reason = "a rename across file systems" if error.errno == errno.EXDEV else (error.strerror or str(error))
        raise ValueError(f"{directory}: a checkpoint cannot be committed in {parent} ({reason}); give a "
                         "directory on a local, writable file system") from None
    finally:
        for p in (probe, moved):
            with contextlib.suppress(OSError):
                os.rmdir(p)
    return path


def _stamp(directory: Path) -> tuple | None:
    """Which commit ``directory`` holds: every save renames a new directory into place."""
    try:
        d, s = os.stat(directory), os.stat(directory / STATE)
    except OSError:
        return None
    return d.st_dev, d.st_ino, s.st_ino, s.st_mtime_ns


def read_consistently(directory: str | os.PathLike, read: Callable[[], T], attempts: int = 20) -> T:
    """``read()`` (which reads files of ``directory``), repeated while a writer commits a new save
    under it, so every file read comes from one save: a reader never mixes two saves and never
    reports a healthy checkpoint as damaged because a save replaced it half-way through."""
    directory = _plain(directory)
    for attempt in range(attempts):
        before = _stamp(directory)
        try:
            result = read()
        except (OSError, ValueError):
            if attempt + 1 < attempts and (before is None or _stamp(directory) != before):
                time.sleep(0.01 * (attempt + 1))
                recover(directory, wait=1.0)
                continue
            raise
        if before is not None and _stamp(directory) == before:
            return result
        time.sleep(0.01 * (attempt + 1))
    return read()


@contextlib.contextmanager
def lock_directory(directory: str | os.PathLike) -> Iterator[Path]:
    """Hold an advisory lock (``fcntl.flock``) on checkpoint ``directory`` while writing it.

    The lock file is the sibling ``.NAME.lock`` (the directory itself is replaced by every save).
    A second writer fails at once with :class:`CheckpointLocked` naming the holder's pid. The
    lock is re-entrant within one process (the CLI takes it before reading any data, and
    :func:`~tformer.recipes.translation.train_translation` takes it again).
    """
    directory = _plain(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    path = directory.parent / f".{directory.name}.lock"
    if path in _HELD:
        _HELD[path] += 1
        try:
            yield directory
        finally:
            _HELD[path] -= 1
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
                raise CheckpointLocked(
                    f"{directory} is being written by another process (pid {holder}); wait for it to "
                    "finish or choose another directory"
                ) from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        _HELD[path] = 1
        yield directory
    finally:
        _HELD.pop(path, None)
        os.close(fd)  # closing releases the lock
