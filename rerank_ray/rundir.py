"""The run directory: its paths, its manifest, and who may write it.

A run owns its directory. :meth:`RunDirectory.claim` enforces three rules before a stage
touches a file:

* Ownership: ``--out`` must be a new folder, an empty one, or one holding a rerank-ray
  ``manifest.json`` (an object with ``config`` and ``stages``). A file, or a folder with
  anything else in it, is refused with one line naming the folder and what is in the way,
  and nothing in it is read further or changed. Only a claimed directory's own outputs are
  ever removed.
* One writer: the claim holds an exclusive lock on ``RUN/.lock`` until it is released, and
  a second claim (from any process, or another claim in the same one) stops at once with
  one line naming the holder's pid, host and start time. The lock file is never deleted:
  a process that opened it before a deletion would lock a file nobody else sees.
* Leftovers: hidden staging entries named by :func:`rerank_ray.io.temporary_sibling`
  (``.NAME.tmp-1a2b3c4d``) in the run directory, ``data/`` and ``embeddings/`` were left
  by a writer that died; they are removed once the lock is held.

Locally the lock is ``fcntl.flock`` (on NFS, Linux maps it to a POSIX byte-range lock,
which NFS servers honour), so the operating system releases it when the holder dies, even
by SIGKILL: there is never a stale lock. On an object store (``s3://``) pyarrow offers no
atomic create, so :class:`ObjectStoreLock` is best effort, not mutual exclusion: see there.

Example:
    >>> import os, tempfile
    >>> run = RunDirectory(os.path.join(tempfile.mkdtemp(), "run"))
    >>> with run.claim():
    ...     run.write_manifest({"config": {}, "stages": {}})
    ...     RunDirectory(run.root).claim()
    Traceback (most recent call last):
    rerank_ray.errors.ConfigError: ... is in use by pid ... on host ... since ...
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import json
import logging
import os
import re
import socket
import threading
import time
import uuid
import weakref

import pyarrow.fs as pafs

from rerank_ray.errors import ConfigError
from rerank_ray.io import (
    absolute,
    discard,
    exists,
    file_info,
    is_uri,
    join,
    makedirs,
    read_json,
    read_text,
    resolve,
    write_json,
)
from rerank_ray.systems import system_stem

log = logging.getLogger("rerank_ray")

LOCK_NAME = ".lock"
MANIFEST_NAME = "manifest.json"
#: Names :func:`rerank_ray.io.temporary_sibling` gives: ``.NAME.tmp-`` and 8 hex digits.
TEMPORARY_NAME = re.compile(r"^\..+\.tmp-[0-9a-f]{8}$")
#: Folders of a run directory (relative to it) where stages stage their outputs.
STAGING_FOLDERS = ((), ("data",), ("embeddings",), ("rerank",))


class RunDirectory:
    """Paths inside a run directory, and its manifest.

    The root is a local directory or a URI (``s3://bucket/runs/seed``): see
    :mod:`rerank_ray.io`. On an object store the manifest is the commit point of each stage.
    Constructing one reads and writes nothing; :meth:`claim` takes it for writing.
    """

    def __init__(self, root: str | os.PathLike):
        self.root = absolute(root)

    def _at(*names: str) -> property:
        return property(lambda self: join(self.root, *names))

    data_dir = _at("data")
    corpus_embeddings_dir = _at("embeddings", "corpus")
    query_embeddings_dir = _at("embeddings", "queries")
    retrieval_path = _at("retrieval.parquet")
    rerank_dir = _at("rerank")
    plot_path = _at("report.png")
    metrics_path = _at("metrics.json")
    per_query_path = _at("per_query.parquet")
    significance_path = _at("significance.json")
    report_path = _at("report.md")
    manifest_path = _at(MANIFEST_NAME)
    lock_path = _at(LOCK_NAME)
    del _at

    def rerank_path(self, system: str) -> str:
        """``rerank/<system>.parquet``: one reranker's scores and ranks
        (:func:`rerank_ray.systems.system_stem` names the file)."""
        return join(self.rerank_dir, system_stem(system) + ".parquet")

    def read_manifest(self) -> dict:
        """The manifest, ``{}`` if there is none; a manifest rerank-ray did not write is a
        :class:`ConfigError`."""
        if not exists(self.manifest_path):
            return {}
        manifest = _parse_manifest(self.manifest_path)
        if manifest is None:
            raise ConfigError(f"{self.manifest_path}: not a rerank-ray manifest")
        return manifest

    def write_manifest(self, manifest: dict) -> None:
        makedirs(self.root)
        write_json(self.manifest_path, manifest)

    def require(self, path: str, stage: str) -> None:
        if not exists(path):
            raise ConfigError(f"{path}: missing; run the '{stage}' stage first")

    def claim(self) -> RunLock:
        """Take the directory for writing: check ownership, lock it, remove leftovers.

        Returns the held lock (a context manager; ``release()`` ends the claim).

        Raises:
            ConfigError: the directory is not a run directory (nothing was touched), or
                another holder has it (the message names the holder).
        """
        check_owned(self.root)
        try:
            makedirs(self.root)
        except OSError as error:
            raise ConfigError(f"{self.root}: cannot create the run directory ({error})") from None
        lock = (ObjectStoreLock if is_uri(self.root) else LocalLock)(self.root, self.lock_path)
        lock.acquire()
        try:
            self.remove_leftovers()
        except BaseException:
            lock.release()
            raise
        return lock

    def remove_leftovers(self) -> list[str]:
        """Remove staging entries (:data:`TEMPORARY_NAME`) a dead writer left; call only
        while holding the lock. Returns the removed paths."""
        removed = []
        for parts in STAGING_FOLDERS:
            folder = join(self.root, *parts)
            for name, _ in _entries(folder) or ():
                if TEMPORARY_NAME.match(name):
                    path = join(folder, name)
                    log.info("%s: removing a leftover of an interrupted run", path)
                    discard(path)
                    removed.append(path)
        return removed


# ---------------------------------------------------------------------------- ownership


def check_owned(root: str) -> None:
    """Refuse ``root`` unless it is missing, empty, or a rerank-ray run directory.

    Reads only. Without a manifest, the only entries allowed are the lock file and, next
    to it, staging leftovers: what a claim that wrote no manifest yet leaves behind.
    """
    entries = _entries(root)
    if entries is None:
        return
    names = {name for name, _ in entries}
    if MANIFEST_NAME in names:
        if _parse_manifest(join(root, MANIFEST_NAME)) is None:
            raise ConfigError(
                f"{root}: its {MANIFEST_NAME} is not a rerank-ray manifest;"
                " use a new or empty folder as the run directory"
            )
        return
    claimed = LOCK_NAME in names
    in_the_way = sorted(
        name + ("/" if is_directory else "")
        for name, is_directory in entries
        if name != LOCK_NAME and not (claimed and TEMPORARY_NAME.match(name))
    )
    if in_the_way:
        shown = ", ".join(in_the_way[:5])
        more = f" and {len(in_the_way) - 5} more" if len(in_the_way) > 5 else ""
        raise ConfigError(
            f"{root}: not a rerank-ray run directory (no {MANIFEST_NAME}; it holds"
            f" {shown}{more}); use a new or empty folder as the run directory"
        )


def _entries(path: str) -> list[tuple[str, bool]] | None:
    """``(name, is a directory)`` of each entry of folder ``path``; ``None`` if it does not
    exist; a :class:`ConfigError` if it is not a folder."""
    info = file_info(path)
    if info.type == pafs.FileType.NotFound:
        return None
    if info.type != pafs.FileType.Directory:
        raise ConfigError(f"{path}: not a directory; a run directory is a folder")
    filesystem, inner = resolve(path)
    selector = pafs.FileSelector(inner, allow_not_found=True)
    return [
        (info.base_name, info.type == pafs.FileType.Directory)
        for info in filesystem.get_file_info(selector)
    ]


def _parse_manifest(path: str) -> dict | None:
    """The manifest at ``path`` if rerank-ray wrote it (an object with ``config`` and
    ``stages`` objects), else ``None``."""
    try:
        manifest = read_json(path)
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    if not isinstance(manifest, dict):
        return None
    if not all(isinstance(manifest.get(key), dict) for key in ("config", "stages")):
        return None
    return manifest


# ---------------------------------------------------------------------------- locks


def _holder_record(token: str) -> dict:
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "since": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "token": token,
        "heartbeat": time.time(),
    }


def _in_use(root: str, holder: dict | None) -> ConfigError:
    if not holder:
        return ConfigError(f"{root} is in use by another run")
    return ConfigError(
        f"{root} is in use by pid {holder.get('pid')} on host {holder.get('host')}"
        f" since {holder.get('since')}"
    )


def _parse_holder(text: str) -> dict | None:
    try:
        holder = json.loads(text)
    except ValueError:
        return None
    return holder if isinstance(holder, dict) and "pid" in holder else None


class RunLock:
    """An exclusive claim on a run directory; a context manager that releases it."""

    def __init__(self, root: str, path: str):
        self.root = root
        self.path = path
        self.token = uuid.uuid4().hex
        self.holder: dict | None = None  # ours, while held

    @property
    def held(self) -> bool:
        return self.holder is not None

    def acquire(self) -> None:
        raise NotImplementedError

    def release(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc_info) -> None:
        self.release()


class LocalLock(RunLock):
    """``fcntl.flock`` on the lock file, held through an open file.

    The lock belongs to the open file: the operating system drops it when the file is
    closed, by :meth:`release`, by garbage collection of an abandoned lock, or by the death
    of the process. The file holds the holder's record (host, pid, start time) for the
    message another claimant prints.
    """

    #: How long a claimant waits for a new holder to write its record.
    RECORD_WAIT_SECONDS = 1.0

    def __init__(self, root: str, path: str):
        super().__init__(root, path)
        self._file = None

    def acquire(self) -> None:
        try:
            descriptor = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as error:
            raise ConfigError(f"{self.path}: cannot open the lock file ({error})") from None
        handle = os.fdopen(descriptor, "r+b")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            handle.close()
            if error.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise _in_use(self.root, self._read_holder()) from None
            raise ConfigError(f"{self.path}: cannot lock ({error})") from None
        record = _holder_record(self.token)
        handle.truncate(0)
        handle.write(json.dumps(record).encode() + b"\n")
        handle.flush()
        self._file, self.holder = handle, record

    def _read_holder(self) -> dict | None:
        """The current holder's record, waiting briefly for one that just took the lock."""
        deadline = time.monotonic() + self.RECORD_WAIT_SECONDS
        while True:
            with contextlib.suppress(OSError):
                with open(self.path, encoding="utf-8") as handle:
                    holder = _parse_holder(handle.read())
                if holder:
                    return holder
            if time.monotonic() > deadline:
                return None
            time.sleep(0.05)

    def release(self) -> None:
        if self._file is not None:
            self._file.close()  # drops the flock
        self._file, self.holder = None, None


class ObjectStoreLock(RunLock):
    """A lock object on a store without an atomic create: best effort, not exclusion.

    pyarrow's object-store filesystems cannot create an object only if it is absent, so
    two claims racing within milliseconds can both win. What this does instead:

    * refuse if the lock object belongs to another holder whose heartbeat is fresh (within
      :data:`STALE_SECONDS`; on this host, a holder whose pid is gone is stale at once);
    * otherwise write its own record, wait :data:`SETTLE_SECONDS`, and read it back:
      whoever wrote last keeps it, the other refuses;
    * while held, rewrite the record every :data:`HEARTBEAT_SECONDS`; a holder that died
      stops, and its lock goes stale. A holder that finds another's record in its place
      stops beating and logs an error (its directory may have two writers).

    Freshness compares the clocks of the two hosts: they must agree within a minute.
    """

    HEARTBEAT_SECONDS = 30.0
    STALE_SECONDS = 120.0
    SETTLE_SECONDS = 0.5

    def __init__(self, root: str, path: str):
        super().__init__(root, path)
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    def acquire(self) -> None:
        current = self._read()
        if current and current.get("token") != self.token and not self._stale(current):
            raise _in_use(self.root, current)
        record = _holder_record(self.token)
        write_json(self.path, record)
        time.sleep(self.SETTLE_SECONDS)
        current = self._read()
        if not current or current.get("token") != self.token:
            raise _in_use(self.root, current)
        self.holder = record
        self._beat = threading.Thread(
            target=_heartbeat,
            args=(weakref.ref(self), self._stop, self.HEARTBEAT_SECONDS),
            name=f"rerank-ray lock {self.root}",
            daemon=True,
        )
        self._beat.start()

    def _read(self) -> dict | None:
        try:
            return _parse_holder(read_text(self.path))
        except (OSError, ValueError):
            return None

    def _stale(self, holder: dict) -> bool:
        heartbeat = holder.get("heartbeat")
        if not isinstance(heartbeat, (int, float)) or time.time() - heartbeat > self.STALE_SECONDS:
            return True
        return holder.get("host") == socket.gethostname() and not _alive(holder.get("pid"))

    def beat(self) -> bool:
        """Refresh the record; ``False`` (and an error logged) if another holder replaced it."""
        current = self._read()
        if not current or current.get("token") != self.token:
            log.error("%s: the lock was taken by another run; stopping its heartbeat", self.root)
            return False
        write_json(self.path, {**current, "heartbeat": time.time()})
        return True

    def release(self) -> None:
        if self.holder is None:
            return
        self._stop.set()
        if self._beat is not None and self._beat is not threading.current_thread():
            self._beat.join()
        current = self._read()
        if current and current.get("token") == self.token:
            discard(self.path)
        self.holder = None

    def __del__(self) -> None:
        self._stop.set()  # an abandoned lock stops beating and goes stale


def _heartbeat(lock_ref: weakref.ref, stop: threading.Event, interval: float) -> None:
    """Beat for the lock behind ``lock_ref`` until it is released or collected."""
    while not stop.wait(interval):
        lock = lock_ref()
        if lock is None:
            return
        try:
            if not lock.beat():
                return
        except OSError as error:
            log.warning("%s: could not refresh the lock (%s)", lock.root, error)
        del lock


def _alive(pid) -> bool:
    """Whether process ``pid`` exists on this host."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
