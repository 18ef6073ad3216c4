"""One dump writes a store at a time: a lease, `<store>.lock`, beside the store (never inside it, so
that it is no object of the store).

The lock is a small JSON object, {host, pid, started, heartbeat, token}, that its dump rewrites every
`heartbeat_seconds` with a new heartbeat. Another dump is refused while the holder is alive, and
takes the lock over once the holder is gone: on the same host, when its process no longer exists
(a SIGKILLed dump frees the store at once); on any host, when its heartbeat is older than
`stale_seconds` (hosts' clocks must agree to well within that, as NTP keeps them).

Creating the lock is atomic where the filesystem allows it: a local file is linked into place,
which fails if one is there (O_EXCL semantics, content complete); on object stores it is a
conditional put (If-None-Match: AWS S3 honours it; a store that ignores it lets the last writer
win). Taking a lock over replaces it, then reads it back after `settle_seconds`: of two dumps that
both found the lock gone, the one whose write landed last keeps it and the other is refused. The
race left: a dump that found the lock gone and then stalls longer than `settle_seconds` before
writing can take it from one that has already confirmed it. The heartbeat checks, on every beat,
that the lock is still this dump's; a dump that lost it stops at its next check (`check`).
"""
from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

from fsspec.implementations.local import LocalFileSystem

from ..errors import StoreLockedError
from ..store.filesystem import store_filesystem

HEARTBEAT_SECONDS = 30.0
STALE_SECONDS = 600.0
SETTLE_SECONDS = 1.0
ATTEMPTS = 3


def lock_path(out: str | Path) -> str:
    """Where the lock of the store at `out` lives: beside it, on the same filesystem or bucket."""
    return f"{str(out).rstrip('/')}.lock"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _age_seconds(stamp: str) -> float:
    return (datetime.now(timezone.utc) - datetime.fromisoformat(stamp)).total_seconds()


@dataclass(frozen=True)
class LockHolder:
    """The dump a lock names: where it runs, since when, when it last proved alive."""

    host: str
    pid: int
    started: str  # ISO 8601, UTC
    heartbeat: str
    token: str  # tells this dump's lock from another's with the same host and pid

    @classmethod
    def from_json(cls, text: bytes) -> LockHolder:
        """The dump a lock's JSON names; ValueError, TypeError or KeyError when it names none."""
        fields = json.loads(text)
        return cls(str(fields["host"]), int(fields["pid"]), datetime.fromisoformat(fields["started"]).isoformat(),
                   datetime.fromisoformat(fields["heartbeat"]).isoformat(), str(fields["token"]))

    def describe(self) -> str:
        return (f"process {self.pid} on {self.host}, started {self.started}, last heartbeat "
                f"{_age_seconds(self.heartbeat):.0f} s ago")


def _process_exists(pid: int) -> bool:
    """Whether a process of this id runs on this host (a zombie, killed but not yet reaped, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True  # no /proc: os.kill's answer stands


class StoreLock:
    """The lease of the store at `out`; see the module's docstring for the protocol."""

    def __init__(self, out: str | Path, heartbeat_seconds: float = HEARTBEAT_SECONDS,
                 stale_seconds: float = STALE_SECONDS, settle_seconds: float = SETTLE_SECONDS):
        self.out = str(out)
        self.fs, self.path = store_filesystem(lock_path(out))
        self.heartbeat_seconds, self.stale_seconds, self.settle_seconds = heartbeat_seconds, stale_seconds, settle_seconds
        self.local = isinstance(self.fs, LocalFileSystem)
        self.holder: LockHolder | None = None  # this dump, while it holds the lock
        self.lost_to: LockHolder | None = None  # who took the lock from this dump, if anyone did
        self._stop = threading.Event()
        self._beating: threading.Thread | None = None

    def acquire(self) -> None:
        """Take the lock, or raise StoreLockedError naming the dump that holds it."""
        me = LockHolder(socket.gethostname(), os.getpid(), _now(), _now(), uuid.uuid4().hex)
        for _ in range(ATTEMPTS):
            holder = self._read()
            if holder is None:
                if not self._create(me):
                    continue  # another dump created it first: look at what it wrote
                # A local link is exclusive; an object store's conditional put may not be honoured.
                confirmed = self.local or self._confirmed(me)
            elif self._is_gone(holder):
                self._write(me)
                confirmed = self._confirmed(me)
            else:
                raise StoreLockedError(self._held_message(holder))
            if confirmed:
                self.holder = me
                self._beating = threading.Thread(target=self._beat, name="ldcache-lock-heartbeat", daemon=True)
                self._beating.start()
                return
        raise StoreLockedError(f"{self.out}: other dumps keep taking its lock {self.path} as this one tries to; "
                               "run one dump at a time on a store")

    def check(self) -> None:
        """Raise StoreLockedError when another dump has taken the lock from this one."""
        if self.lost_to is not None:
            raise StoreLockedError(
                f"{self.out}: another dump ({self.lost_to.describe()}) took over its lock {self.path} while this "
                f"one ran, which happens when a dump's heartbeat stops for {self.stale_seconds:.0f} s (a stalled "
                "process or filesystem, or clocks that disagree); this dump stops: let the other one finish")

    def release(self) -> None:
        """Stop the heartbeat and remove the lock, if it is still this dump's."""
        if self._beating is not None:
            self._stop.set()
            self._beating.join()
            self._beating = None
        if self.holder is not None:
            current = self._read()
            if current is not None and current.token == self.holder.token:
                self.fs.rm_file(self.path)
            self.holder = None

    def _held_message(self, holder: LockHolder) -> str:
        return (f"{self.out} is being written by another dump: {holder.describe()} (lock {self.path}). Wait for "
                "it to end or stop it, then run this command again, with --resume to finish its store; a dump "
                "that died frees the lock by itself: at once on its own host, elsewhere once its heartbeat is "
                f"{self.stale_seconds / 60:.0f} minutes old")

    def _is_gone(self, holder: LockHolder) -> bool:
        if _age_seconds(holder.heartbeat) > self.stale_seconds:
            return True
        return holder.host == socket.gethostname() and not _process_exists(holder.pid)

    def _read(self) -> LockHolder | None:
        try:
            text = self.fs.cat_file(self.path)
        except FileNotFoundError:
            return None
        try:
            return LockHolder.from_json(text)
        except (ValueError, TypeError, KeyError):
            raise StoreLockedError(f"{self.path} is not the lock of an ldcache dump; if no dump is writing "
                                   f"{self.out}, delete it and run the command again") from None

    def _create(self, holder: LockHolder) -> bool:
        """Write the lock only if there is none; False when there was."""
        data = json.dumps(asdict(holder)).encode()
        try:
            if self.local:
                staged = self._staged(data)
                try:
                    os.link(staged, self.path)  # fails when the lock exists, and never shows it half written
                finally:
                    os.unlink(staged)
            else:
                self.fs.pipe_file(self.path, data, mode="create")
        except FileExistsError:
            return False
        return True

    def _write(self, holder: LockHolder) -> None:
        """Replace the lock, whole: a reader sees the old one or the new one."""
        data = json.dumps(asdict(holder)).encode()
        if self.local:
            os.replace(self._staged(data), self.path)
        else:
            self.fs.pipe_file(self.path, data)

    def _staged(self, data: bytes) -> str:
        """A local file beside the lock holding `data`, to be moved into place."""
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        staged = f"{self.path}.{uuid.uuid4().hex}.tmp"
        with open(staged, "wb") as f:
            f.write(data)
        return staged

    def _confirmed(self, holder: LockHolder) -> bool:
        """Whether the lock still names `holder` once a write racing with its own has landed."""
        time.sleep(self.settle_seconds)
        current = self._read()
        return current is not None and current.token == holder.token

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_seconds):
            try:
                if not self._beat_once():
                    return
            except Exception:  # a beat missed for a network or disk hiccup: the next one tries again
                continue

    def _beat_once(self) -> bool:
        """Write a new heartbeat into the lock; False, with `lost_to` set, when another dump holds it now."""
        beat = replace(self.holder, heartbeat=_now())
        current = self._read()
        # Deleted by hand: no other dump claimed the store, so this one writes its lock back.
        if current is None and self._create(beat):
            return True
        current = current or self._read()
        if current is not None and current.token != beat.token:
            self.lost_to = current
            return False
        self._write(beat)
        return True
