"""Run directories: one trainer at a time, and never over an existing run by accident.

    RUN_DIR/.lock    held by the trainer writing the run (``fcntl.flock``): its pid, host and start

:func:`open_run_dir` is called once, before a trainer writes anything:

* ``--run-dir`` must be a directory (or not exist yet);
* ``--resume`` needs an existing run (``experiment.yaml``);
* the directory is locked: a second trainer on it stops, naming the holder. The kernel
  releases the lock when its process dies (also on ``kill -9``), so the lock of a dead
  process is taken over without anyone removing a file;
* without ``--resume`` a directory that already holds a run is refused (``--resume``
  continues it, ``--overwrite`` deletes it first: :func:`clear_run`), and a non-empty
  directory that is not a run is refused even with ``--overwrite`` (nothing of yours is
  deleted);
* unfinished checkpoint folders (``checkpoints/.tmp-*``) and temporary files of atomic
  writes (``.NAME.tmp-PID``) left by killed processes are removed: while the lock is held no
  other trainer writes here, so every one of them is dead.
"""

from __future__ import annotations

import datetime
import fcntl
import json
import os
import shutil
import socket
import warnings
from pathlib import Path

from .experiment import EXPERIMENT_FILE

LOCK_NAME = ".lock"
RUN_MARKERS = (EXPERIMENT_FILE, "checkpoints", "metrics.csv", "metrics.json")  # what makes a folder a run


class RunDirError(ValueError):
    """A run directory cannot be used as asked (busy, already a run, not a directory, ...)."""


class RunLock:
    """An exclusive, non-blocking lock on ``run_dir/.lock``, released by :meth:`release`
    or by the death of the process."""

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / LOCK_NAME
        self.fd: int | None = None

    def acquire(self) -> RunLock:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as e:
            raise RunDirError(f"cannot lock run directory {self.path.parent}: {e.strerror} ({self.path}); "
                              "choose another --run-dir or fix its permissions") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 4096).decode(errors="replace")
            os.close(fd)
            raise RunDirError(f"run directory {self.path.parent} is in use by another trainer "
                              f"({describe_holder(holder)}); wait for it to finish, stop it, or choose another "
                              "--run-dir") from None
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                 "since": datetime.datetime.now().isoformat(timespec="seconds")}).encode())
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


def describe_holder(text: str) -> str:
    """``pid 123 on host x since 2026-12-01T17:00:00`` from the lock file's JSON."""
    try:
        info = json.loads(text)
        return f"pid {info['pid']} on host {info['host']} since {info['since']}"
    except (ValueError, KeyError, TypeError):
        return "a process that has not written its pid yet"


def open_run_dir(run_dir: str | os.PathLike, resume: bool = False, overwrite: bool = False) -> RunLock:
    """Check, create and lock ``run_dir`` for a trainer (see the module docstring); the
    caller releases the returned lock. ``overwrite`` is checked here but applied by
    :func:`clear_run`, once the trainer is ready to write."""
    run_dir = Path(run_dir)
    if resume and overwrite:
        raise RunDirError("--resume continues a run and --overwrite deletes it: give one of them")
    if run_dir.exists() and not run_dir.is_dir():
        raise RunDirError(f"--run-dir {run_dir} is a file, not a directory; choose another --run-dir")
    if resume and not (run_dir / EXPERIMENT_FILE).is_file():
        what = "does not exist" if not run_dir.exists() else f"holds no run ({EXPERIMENT_FILE} not found)"
        raise FileNotFoundError(f"--resume: run directory {run_dir} {what}; start a new run without --resume")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RunDirError(f"cannot create run directory {run_dir}: {e.strerror}") from None
    lock = RunLock(run_dir).acquire()
    try:
        remove_stale_temporaries(run_dir)  # first: a trainer killed while writing experiment.yaml left only a temporary
        if not resume:
            check_fresh(run_dir, overwrite)
    except BaseException:
        lock.release()
        raise
    return lock


def check_fresh(run_dir: Path, overwrite: bool) -> None:
    """Refuse a directory that holds a run (unless ``overwrite``) or other files."""
    entries = sorted(p.name for p in run_dir.iterdir() if p.name != LOCK_NAME)
    if not entries:
        return
    if not any((run_dir / marker).exists() for marker in RUN_MARKERS):
        raise RunDirError(f"--run-dir {run_dir} is not empty and holds no perceptio run ({', '.join(entries[:5])}"
                          f"{', ...' if len(entries) > 5 else ''}); choose a new or empty --run-dir")
    if not overwrite:
        raise RunDirError(f"{run_dir} already holds a run ({', '.join(entries[:6])}); continue it with --resume, "
                          "or delete it and start over with --overwrite")


def clear_run(run_dir: Path) -> None:
    """Delete everything of the old run in ``run_dir`` but the lock (``--overwrite``)."""
    for p in Path(run_dir).iterdir():
        if p.name == LOCK_NAME:
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()


def remove_stale_temporaries(run_dir: Path) -> list[Path]:
    """Remove unfinished checkpoints and atomic-write temporaries of dead processes; the
    caller holds the lock, so no live trainer owns any of them."""
    root = run_dir / "checkpoints"
    found = [p for p in root.glob(".tmp-*")] if root.is_dir() else []
    for folder in (run_dir, run_dir / "plots", root, *(root.iterdir() if root.is_dir() else ())):
        if folder.is_dir():
            found += [p for p in folder.glob(".*.tmp-*") if p.is_file()]
    for p in found:
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
    if found:
        warnings.warn(f"removed {len(found)} unfinished file(s) of an interrupted run in {run_dir}: "
                      f"{', '.join(str(p.relative_to(run_dir)) for p in found[:4])}", stacklevel=3)
    return found
