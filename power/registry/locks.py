"""How processes that share one store coordinate: file locks inside the store, so several
`power serve` replicas (on one host, or on hosts that mount the same filesystem) can create,
pull, copy, delete and prune side by side.

    <root>/.locks/store.lock             the store lock: held, briefly and exclusively, by every
                                         change of which manifests exist and which blobs they need
                                         (writing or deleting a manifest, committing a blob,
                                         pinning, removing blobs)
    <root>/.locks/download-<hex>.lock    held by the one process fetching that blob
    <root>/.locks/session-<token>        held by a live process for its whole life: the blobs it
                                         pins and the ones it created, one `pin|new <digest>` a line
                                         (each change is a new file, locked, renamed over it from
                                         `.new-session-<token>`)
    <root>/.tmp/<token>/                 that process's temporaries

Locks are flock(2) locks on open files: the kernel drops them when their holder dies, so a lock
that can be taken tells that its owner is gone. A lock file that may be removed is removed only
by a holder, and a taker checks after locking that the file it locked is still the one at that
path (else it locks the new one). Within one process the locks also exclude each other (an
in-process table of held paths), since an NFS client emulates flock with POSIX locks, which do
not exclude a process from itself and which closing any descriptor of the file drops.

Pins: an operation (a create, a pull) pins the blobs it will reference before it checks that
they exist or writes them, and unpins them after its manifest is written. Removers (delete,
prune) take the store lock and keep every blob a manifest or a live session references; a dead
session's pins no longer count, and the blobs it marked `new` (created, not yet referenced) are
garbage that the next prune removes at once.

NFS: this needs working locks (NFSv4, or v3 with lockd; never the `nolock` mount option). A host
that dies holding a lock keeps it until the server's lease expires (90 s by default on NFSv4).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import re
import secrets
import shutil
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path

import attrs

log = logging.getLogger(__name__)

LOCKS_DIR = ".locks"
TEMP_DIR = ".tmp"
STORE_LOCK = "store.lock"
SESSION_PREFIX = "session-"
_NEW_SESSION_PREFIX = ".new-session-"
TOKEN_RE = re.compile(r"[0-9]+-[0-9a-f]{8}")
_DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}")

_held_guard = threading.Condition()
_held: set[str] = set()  # paths this process holds a FileLock on


def _key(path: Path) -> str:
    return os.path.abspath(path)


class FileLock:
    """An exclusive lock on `path` (created if missing): flock(2) on an open descriptor plus
    this process's table of held paths. `remove_on_release` unlinks the file while it is still
    held, for lock files named after short-lived things (a download)."""

    def __init__(self, path: Path, *, remove_on_release: bool = False) -> None:
        self.path = Path(path)
        self.remove_on_release = remove_on_release
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self, blocking: bool = True) -> bool:
        """Take the lock; with `blocking=False` answer False at once when someone holds it."""
        if self._fd is not None:
            raise RuntimeError(f"{self.path.name} is already held by this object")
        key = _key(self.path)
        with _held_guard:
            while key in _held:
                if not blocking:
                    return False
                _held_guard.wait()
            _held.add(key)
        try:
            fd = _flock_current_file(self.path, blocking)
        except BaseException:
            self._forget(key)
            raise
        if fd is None:
            self._forget(key)
            return False
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            if self.remove_on_release:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.path)
        finally:
            os.close(fd)
            self._forget(_key(self.path))

    @staticmethod
    def _forget(key: str) -> None:
        with _held_guard:
            _held.discard(key)
            _held_guard.notify_all()

    def __enter__(self) -> FileLock:
        self.acquire()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()


def _flock_current_file(path: Path, blocking: bool) -> int | None:
    """A descriptor of `path` holding its flock, or None (not blocking, someone holds it).
    Retries when the file was removed or replaced while this process waited for it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            return None
        except BaseException:
            os.close(fd)
            raise
        try:
            locked, current = os.fstat(fd), os.stat(path)
            if (locked.st_dev, locked.st_ino) == (current.st_dev, current.st_ino):
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)


def _try_lock_existing(path: Path) -> int | None:
    """Flock an existing file without waiting: its descriptor, or None when the file is gone
    or someone (a live process) holds it."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        os.close(fd)
        if error.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return None
        raise
    return fd


# ---------------------------------------------------------------- the store lock


class StoreLock:
    """The store lock of one store root, re-entrant within a thread; one object per root in
    each process (`store_lock`), so every `Store` of that root shares it."""

    def __init__(self, path: Path) -> None:
        self._file = FileLock(path)
        self._thread_lock = threading.RLock()
        self._depth = 0

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        """Hold the lock for a block. Blocks the calling thread while another process or thread
        holds it (critical sections are short: renames, unlinks, small writes)."""
        with self._thread_lock:
            if self._depth == 0:
                self._file.acquire()
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
                if self._depth == 0:
                    self._file.release()


_registry_guard = threading.Lock()
_store_locks: dict[str, StoreLock] = {}
_sessions: dict[tuple[int, str], Session] = {}


def store_lock(root: Path) -> StoreLock:
    key = os.path.realpath(root)
    with _registry_guard:
        lock = _store_locks.get(key)
        if lock is None:
            lock = _store_locks[key] = StoreLock(Path(key) / LOCKS_DIR / STORE_LOCK)
        return lock


# ---------------------------------------------------------------- sessions and pins


class Session:
    """This process's presence in one store: a session file it holds locked until it exits,
    listing what it pins, and its own temporaries folder. Use `session_of(root)`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        locks = root / LOCKS_DIR
        locks.mkdir(parents=True, exist_ok=True)
        while True:
            self.token = f"{os.getpid()}-{secrets.token_hex(4)}"
            self.path = locks / f"{SESSION_PREFIX}{self.token}"
            fd = self._publish(b"", exclusive=True)
            if fd is not None:
                self._fd = fd
                break
        self._pins: list[Pins] = []
        self._guard = threading.Lock()

    def _publish(self, data: bytes, *, exclusive: bool = False) -> int | None:
        """Put a new session file holding `data` in place, locked by the descriptor returned.

        It is written and locked under the staging name `.new-session-<token>`, then renamed
        over the session file, so nobody sees it unlocked and a crash at any point leaves the
        old file, the new one, or both (a dead process's staging file is read like its session
        file: its `new` marks are the union of the two). None when a scan took the staging file
        for a dead one in between (only possible while the store lock is not held); start over.
        """
        staging = self.path.parent / f"{_NEW_SESSION_PREFIX}{self.token}"
        flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | (os.O_EXCL if exclusive else os.O_TRUNC)
        fd = os.open(staging, flags, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
            os.replace(staging, self.path)
        except FileNotFoundError:
            os.close(fd)
            return None
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(staging)
            os.close(fd)
            raise
        _fsync_folder(self.path.parent)  # the rename too is on disk before a blob appears
        return fd

    @property
    def temp_dir(self) -> Path:
        path = self.root / TEMP_DIR / self.token
        path.mkdir(parents=True, exist_ok=True)
        return path

    def pinned(self) -> set[str]:
        with self._guard:
            return {digest for pins in self._pins for digest in pins.digests}

    def _write(self) -> None:
        """Replace the session file by one listing the open pins (caller holds the store lock).

        A new file renamed over the old one, never the old one truncated and rewritten: a
        process killed between the truncation and the write would leave an empty file, its
        `new` marks lost, and the blobs it had created would outlive it as unreferenced blobs
        that only the prune grace removes."""
        with self._guard:
            lines = sorted(
                {f"new {d}" for pins in self._pins for d in pins.created}
                | {f"pin {d}" for pins in self._pins for d in pins.digests}
            )
        data = "".join(line + "\n" for line in lines).encode()
        while (fd := self._publish(data)) is None:
            pass
        old_fd, self._fd = self._fd, fd
        os.close(old_fd)  # the old file, already replaced: its lock goes with it

    def close(self) -> None:
        """End the session (tests; a process that exits ends it too): its file and folder go."""
        shutil.rmtree(self.root / TEMP_DIR / self.token, ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        os.close(self._fd)
        with _registry_guard:
            _sessions.pop((os.getpid(), os.path.realpath(self.root)), None)


def existing_session(root: Path) -> Session | None:
    """This process's session in the store at `root`, None when it has not started one."""
    with _registry_guard:
        return _sessions.get((os.getpid(), os.path.realpath(root)))


def session_of(root: Path) -> Session:
    """This process's session in the store at `root`, started on first use."""
    key = (os.getpid(), os.path.realpath(root))
    with _registry_guard:
        session = _sessions.get(key)
        if session is None:
            session = _sessions[key] = Session(Path(key[1]))
        return session


@attrs.define(eq=False)
class Pins:
    """The blobs one operation is about to reference (`digests`) and those of them it created
    (`created`). Every change is written to the session file under the store lock; `close`
    drops them (the operation's manifest is written, or it failed and cleaned up itself)."""

    session: Session
    lock: StoreLock
    digests: set[str] = attrs.Factory(set)
    created: set[str] = attrs.Factory(set)

    def add(self, digests: Iterable[str]) -> None:
        """Pin these digests (normalized `sha256:<hex>`); takes the store lock."""
        new = set(digests) - self.digests
        if new:
            with self.lock.hold():
                self.digests |= new
                self.session._write()

    def add_created(self, digest: str) -> None:
        """Pin a blob this operation is about to create; call with the store lock held."""
        self.digests.add(digest)
        self.created.add(digest)
        self.session._write()

    def open(self) -> Pins:
        with self.session._guard:
            self.session._pins.append(self)
        return self

    def close(self) -> None:
        with self.lock.hold():
            with self.session._guard:
                if self in self.session._pins:
                    self.session._pins.remove(self)
            self.session._write()


# ---------------------------------------------------------------- reading others' sessions


@attrs.define
class SessionScan:
    """What the sessions of a store say: the digests live sessions pin, the digests dead
    sessions created (garbage unless referenced) and the names of what was cleaned up."""

    live_pins: set[str] = attrs.Factory(set)
    dead_created: set[str] = attrs.Factory(set)
    removed: list[str] = attrs.Factory(list)


def _read_lines(fd: int) -> list[tuple[str, str]]:
    """The `(kind, digest)` entries of a session file; a line that is not one whole entry (a
    file cut short by a crash) is skipped."""
    data = b""
    while chunk := os.pread(fd, 1 << 16, len(data)):
        data += chunk
    entries = []
    for line in data.decode("utf-8", "replace").splitlines():
        kind, _, digest = line.partition(" ")
        if kind in ("pin", "new") and _DIGEST_RE.fullmatch(digest):
            entries.append((kind, digest))
    return entries


def _fsync_folder(path: Path) -> None:
    """Make the renames in folder `path` durable (where the filesystem allows it)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def scan_sessions(root: Path, own: Session | None, *, clean: bool = True) -> SessionScan:
    """Read every session of the store at `root` (caller holds the store lock). A session whose
    file can be locked is dead: with `clean`, its temporaries folder and file are removed here,
    and what it created is reported in `dead_created` for the caller to remove."""
    scan = SessionScan()
    locks = root / LOCKS_DIR
    if own is not None:
        scan.live_pins |= own.pinned()
    entries = sorted(os.listdir(locks)) if locks.is_dir() else []
    for entry in entries:
        if entry.startswith(_NEW_SESSION_PREFIX):  # died between creating and naming it
            token = entry[len(_NEW_SESSION_PREFIX) :]
        elif entry.startswith(SESSION_PREFIX):
            token = entry[len(SESSION_PREFIX) :]
        else:
            continue
        if own is not None and token == own.token:
            continue
        fd = _try_lock_existing(locks / entry) if clean else None
        if fd is None:
            if entry.startswith(SESSION_PREFIX):
                with contextlib.suppress(FileNotFoundError):
                    with open(locks / entry, "rb") as file:
                        lines = _read_lines(file.fileno())
                    scan.live_pins |= {digest for _kind, digest in lines}
            continue
        try:
            scan.dead_created |= {d for kind, d in _read_lines(fd) if kind == "new"}
            if TOKEN_RE.fullmatch(token):
                shutil.rmtree(root / TEMP_DIR / token, ignore_errors=True)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(locks / entry)
            scan.removed.append(entry)
        finally:
            os.close(fd)
    # A temporaries folder whose session file is gone belongs to a dead process.
    temp = root / TEMP_DIR
    for entry in sorted(os.listdir(temp)) if clean and temp.is_dir() else []:
        if not TOKEN_RE.fullmatch(entry) or (own is not None and entry == own.token):
            continue
        if not (locks / f"{SESSION_PREFIX}{entry}").exists():
            shutil.rmtree(temp / entry, ignore_errors=True)
            scan.removed.append(entry)
    if scan.removed:
        log.info("cleaned up after %d dead processes", len(scan.removed))
    return scan
