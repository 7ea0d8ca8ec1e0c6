"""Where a run's Ray comes from: a cluster it joins, or its private local Ray with every server
on loopback and its orphans stopped later (:func:`connect_ray`).

Rules this module enforces:

* :func:`start_local_ray` starts a Ray of this process (``address="local"``, never a cluster
  found under /tmp/ray) whose node IP is the loopback address. Ray binds its servers (GCS,
  raylet, object manager, core workers, dashboard and runtime-env agents, metrics export,
  autoscaler metrics) to loopback exactly when the node IP is a loopback address, and it turns a
  requested loopback node IP into the machine's address unless Ray clusters are disabled
  (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, read by ``ray._private.services.get_node_ip_address``).
  So the start disables them for its duration: in the environment, which the Ray processes it
  spawns inherit, and in this process's imported constant. The dashboard is off.
* Token authentication stays as Ray sets it: nothing here reads or writes ``RAY_AUTH_MODE``.
* Each start records its driver (pid and start time), its session directory and the Ray
  processes it spawned in a record under :func:`sessions_dir`. :func:`stop_orphans` (called by
  every start, and by ``rerank-ray cleanup``) stops the recorded processes of a record whose
  driver is gone, and nothing else: a process is named by pid *and* start time, so a reused pid
  is never signalled, and a record of a live driver is left alone.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rerank_ray.errors import ConfigError

log = logging.getLogger("rerank_ray")

#: Ray 2.60's switch that lets a loopback node IP stand (see the module docstring).
CLUSTER_SWITCH = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
#: Where the records of private Ray sessions live (default: a per-user folder in the temp dir).
SESSIONS_DIR_ENV = "RERANK_RAY_SESSIONS_DIR"
#: Seconds a stopped process gets between SIGTERM and SIGKILL.
TERM_GRACE_S = 3.0
#: Two start times closer than this are the same process start (psutil rounds to clock ticks).
SAME_START_S = 0.05


def sessions_dir() -> Path:
    """The folder of session records: ``$RERANK_RAY_SESSIONS_DIR``, else
    ``<tmp>/rerank-ray-<uid>/ray-sessions``."""
    given = os.environ.get(SESSIONS_DIR_ENV)
    if given:
        return Path(given)
    return Path(tempfile.gettempdir()) / f"rerank-ray-{os.getuid()}" / "ray-sessions"


def connect_ray(address: str | None) -> None:
    """Join the Ray cluster at ``address`` (or the job's), or start a private local one
    (:func:`rerank_ray.local_ray.start_local_ray`: loopback only)."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    if ray.is_initialized():
        return
    if not address and not os.environ.get("RAY_ADDRESS"):
        # A private Ray of this process on loopback, never a cluster recorded under /tmp/ray.
        start_local_ray(logging_level=logging.WARNING)
        return
    # With no address: inside `ray job submit`, the job's cluster (RAY_ADDRESS).
    shown = address or os.environ["RAY_ADDRESS"]
    if address:
        _require_listening(address)
    try:
        ray.init(address=address or None, logging_level=logging.WARNING)
    except ConnectionError as error:
        raise ConfigError(
            f"cannot connect to the Ray cluster at {shown}"
            f" ({str(error).strip().splitlines()[0]}); does RAY_AUTH_MODE match its token"
            " authentication (a `ray start` cluster uses RAY_AUTH_MODE=token)?"
        ) from None


#: Seconds to wait for a cluster's GCS port to accept a connection before refusing the run
#: (Ray itself retries a dead address for many minutes).
CONNECT_TIMEOUT_S = 5.0


def _require_listening(address: str) -> None:
    """Refuse (one line) a ``host:port`` address where nothing accepts connections; other
    forms (``auto``, ``ray://...``) are left to Ray."""
    import socket

    host, _, port = address.rpartition(":")
    if not host or "/" in address or not port.isdigit():
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), CONNECT_TIMEOUT_S).close()
    except OSError as error:
        raise ConfigError(
            f"cannot connect to the Ray cluster at {address}: {error.strerror or error};"
            " is it running (`ray start --head` prints its address)?"
        ) from None


def start_local_ray(**init_options: Any) -> None:
    """Start this process's private Ray on loopback (a no-op when Ray is already initialized).

    Stops the orphans of earlier sessions first, then calls ``ray.init(address="local", ...)``
    with the dashboard off and ``init_options`` (e.g. ``num_cpus``), then records the session.
    """
    import ray

    if ray.is_initialized():
        return
    stop_orphans()
    psutil = _psutil()
    driver = psutil.Process()
    before = {child.pid for child in driver.children(recursive=True)}
    init_options.setdefault("include_dashboard", False)
    init_options.setdefault("logging_level", logging.WARNING)
    with _loopback_node():
        ray.init(address="local", **init_options)
    spawned = [child for child in driver.children(recursive=True) if child.pid not in before]
    session_dir = ray._private.worker.global_worker.node.get_session_dir_path()
    record_session(driver, session_dir, spawned)


@contextmanager
def _loopback_node() -> Iterator[None]:
    """Within the block, Ray keeps a loopback node IP: clusters disabled in the environment and
    in this process's ``ray_constants``; both are restored afterwards."""
    from ray._private import ray_constants

    saved_env = os.environ.get(CLUSTER_SWITCH)
    saved_constant = ray_constants.ENABLE_RAY_CLUSTER
    os.environ[CLUSTER_SWITCH] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved_constant
        if saved_env is None:
            os.environ.pop(CLUSTER_SWITCH, None)
        else:
            os.environ[CLUSTER_SWITCH] = saved_env


def _psutil():
    """psutil, imported after Ray, which puts its own copy on the path when none is installed."""
    import ray  # noqa: F401

    return importlib.import_module("psutil")


def _identity(process) -> dict[str, Any]:
    """A process named so that a later, different process with the same pid does not match."""
    with process.oneshot():
        return {"pid": process.pid, "start": process.create_time(), "name": process.name()}


def _owned_dir() -> Path | None:
    """:func:`sessions_dir`, created private (0700); None when it belongs to another user."""
    folder = sessions_dir()
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    if folder.stat().st_uid != os.getuid():
        log.warning("%s belongs to another user: Ray sessions are not recorded there", folder)
        return None
    return folder


def record_session(driver, session_dir: str, processes: list) -> Path | None:
    """Write the record of one session (atomically) and return its path.

    ``driver`` and ``processes`` are :class:`psutil.Process` objects; processes that are already
    gone are left out.
    """
    psutil = _psutil()

    folder = _owned_dir()
    if folder is None:
        return None
    named = []
    for process in processes:
        try:
            named.append(_identity(process))
        except psutil.Error:
            continue
    record = {"driver": _identity(driver), "session_dir": session_dir, "processes": named}
    path = folder / f"{driver.pid}-{Path(session_dir).name}.json"
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(record, indent=1), encoding="utf-8")
    os.replace(partial, path)
    return path


def _running(identity: dict[str, Any]):
    """The live (not zombie) process of this user named by ``identity``, else None."""
    psutil = _psutil()

    try:
        process = psutil.Process(identity["pid"])
        with process.oneshot():
            same = abs(process.create_time() - identity["start"]) < SAME_START_S
            if not same or process.status() == psutil.STATUS_ZOMBIE:
                return None
            if process.uids().real != os.getuid():
                return None
    except (psutil.Error, KeyError, TypeError):
        return None
    return process


def _read_record(path: Path) -> dict[str, Any] | None:
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or not isinstance(record.get("driver"), dict):
        return None
    return record


def stop_orphans() -> list[dict[str, Any]]:
    """Stop the Ray processes recorded by sessions whose driver is gone; return them.

    A record of a live driver is kept as is; a record of a gone driver is removed once its
    processes are stopped (SIGTERM, then SIGKILL after :data:`TERM_GRACE_S`).
    """
    folder = sessions_dir()
    if not folder.is_dir() or folder.stat().st_uid != os.getuid():
        return []
    me = os.getpid()
    stopped: list[dict[str, Any]] = []
    for path in sorted(folder.glob("*.json")):
        record = _read_record(path)
        if record is None or _running(record["driver"]) is not None:
            continue
        victims = []
        for identity in record.get("processes", []):
            process = _running(identity) if isinstance(identity, dict) else None
            if process is not None and process.pid != me:
                victims.append((process, identity))
        _terminate([process for process, _ in victims])
        driver_pid = record["driver"].get("pid")
        for process, identity in victims:
            log.warning(
                "stopped pid %s (%s), left by the private Ray of driver pid %s, which is gone",
                process.pid,
                identity.get("name"),
                driver_pid,
            )
            stopped.append(
                {
                    "pid": process.pid,
                    "name": identity.get("name"),
                    "driver_pid": driver_pid,
                    "session_dir": record.get("session_dir"),
                }
            )
        path.unlink(missing_ok=True)
    return stopped


def _terminate(processes: list) -> None:
    """SIGTERM ``processes``, SIGKILL the ones still running after :data:`TERM_GRACE_S`."""
    psutil = _psutil()

    for signal_them in (psutil.Process.terminate, psutil.Process.kill):
        for process in processes:
            try:
                signal_them(process)
            except psutil.Error:
                continue
        processes = _still_running(processes, TERM_GRACE_S)
        if not processes:
            return


def _still_running(processes: list, timeout: float) -> list:
    """The ``processes`` still running (not gone, not zombie) after up to ``timeout`` seconds.

    Polls instead of ``psutil.wait_procs``: a killed orphan whose new parent does not reap it
    stays a zombie, which ``wait_procs`` counts as running.
    """
    psutil = _psutil()

    deadline = time.monotonic() + timeout
    while True:
        running = []
        for process in processes:
            try:
                if process.status() != psutil.STATUS_ZOMBIE:
                    running.append(process)
            except psutil.Error:
                continue
        if not running or time.monotonic() >= deadline:
            return running
        processes = running
        time.sleep(0.1)
