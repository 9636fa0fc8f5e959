"""Resume after a kill: Snakemake's working-directory lock, released when its owner is dead.

Snakemake locks the working directory (``.snakemake/locks/``) while it runs
and removes the lock when it ends. A run killed with SIGKILL (out of memory,
``kill -9``, a cluster time-out of the head job, a power loss) cannot remove
it, and the next ``snakemake`` refuses to start until ``snakemake --unlock``.
So that the same command resumes a killed run, the Snakefile

* records, once it holds the lock (``onstart``), who holds it:
  :func:`record_lock_owner` writes ``.snakemake/locks/qs-owner.HOST.PID.json``
  (host, pid, process start time); Snakemake deletes the folder, and with it
  the record, when it unlocks;
* on the next start (:func:`release_stale_lock`, main process only) removes
  the lock when every recorded owner ran on *this* host and is gone (its pid
  is free or now names a process started at another time).

A lock without an owner record (``snakemake`` killed before ``onstart``, or
a lock from elsewhere) and a lock of another host or of a live process are
left alone: Snakemake then stops with its usual ``--unlock`` advice.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

OWNER_GLOB = "qs-owner.*.json"


def _lock_dir(workdir) -> Path:
    return Path(workdir) / ".snakemake" / "locks"


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux ``/proc``), None where unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22; the name in (...) may hold spaces


def _alive(pid: int, start: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        pass
    now = _start_time(pid)
    return start is None or now is None or now == start


def record_lock_owner(workdir=".") -> Path:
    """Record this process (the Snakemake holding the lock) as an owner of the working-directory lock."""
    host, pid = socket.gethostname(), os.getpid()
    path = _lock_dir(workdir) / f"qs-owner.{host}.{pid}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"host": host, "pid": pid, "start": _start_time(pid)}) + "\n")
    return path


def release_stale_lock(workdir=".") -> str | None:
    """Remove the working-directory lock of Snakemake runs killed on this host; returns what was done, or None."""
    locks = _lock_dir(workdir)
    lock_files = sorted(locks.glob("*.lock")) if locks.is_dir() else []
    if not lock_files:
        return None
    owners = []
    for record in sorted(locks.glob(OWNER_GLOB)):
        try:
            owners.append(json.loads(record.read_text()))
        except (OSError, ValueError):
            return None  # being written, or damaged: not proof of anything
    host = socket.gethostname()
    if not owners or any(o.get("host") != host or _alive(int(o["pid"]), o.get("start")) for o in owners):
        return None
    for f in [*lock_files, *locks.glob(OWNER_GLOB)]:
        f.unlink(missing_ok=True)
    pids = ", ".join(str(o["pid"]) for o in owners)
    return f"removed the lock of a Snakemake run that was killed (pid {pids} on {host}); resuming"
