"""A run's private Ray listens on loopback only, and a later run stops what a killed run left.

Each Ray here is started the way the CLI starts it (``connect_ray(None)``) in a subprocess
driver, so it is neither the session's Ray nor anyone else's.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from rerank_ray.local_ray import SESSIONS_DIR_ENV, record_session

#: Each test starts Ray in subprocess drivers of its own.
pytestmark = pytest.mark.slow

#: Servers that Ray 2.60 cannot bind to loopback on a loopback node, with the reason. None: with
#: a loopback node IP, GCS, raylet (node manager, object manager), core workers, the dashboard
#: agent (gRPC, HTTP, metrics export), the runtime-env agent and the autoscaler's metrics all
#: bind the node IP or localhost. A server listed here must be guarded by Ray's token auth.
CANNOT_BIND: dict[str, str] = {}

#: The port files a node writes into its session directory once its servers are up
#: (the dashboard agent's HTTP port file comes last, after it tried to bind).
PORT_FILES = (
    "gcs_server_port_",
    "metrics_agent_port_",
    "metrics_export_port_",
    "runtime_env_agent_port_",
    "dashboard_agent_listen_port_",
)

#: Driver that starts its Ray as the CLI does, prints its pid and session dir, then waits.
HOLD = """
import json, os, time
import ray
from rerank_ray.local_ray import connect_ray
connect_ray(None)
session_dir = ray._private.worker.global_worker.node.get_session_dir_path()
print(json.dumps({"pid": os.getpid(), "session_dir": session_dir}), flush=True)
time.sleep(600)
"""

#: Driver that starts its Ray as the CLI does, runs a task, waits until every server is up,
#: and prints the listening TCP sockets of every process of its Ray session as JSON.
LIST = """
import json, logging, os, sys, time
logging.basicConfig(level=logging.WARNING, format="%(message)s")
import ray
from rerank_ray.local_ray import connect_ray
connect_ray(None)
import psutil
ray.get(ray.remote(lambda: 1).remote())
session_dir = ray._private.worker.global_worker.node.get_session_dir_path()
deadline = time.monotonic() + 180
while not all(any(n.startswith(p) for n in os.listdir(session_dir)) for p in PORT_FILES):
    if time.monotonic() > deadline:
        sys.exit(f"servers not up: {sorted(os.listdir(session_dir))}")
    time.sleep(0.5)
me = psutil.Process()
processes = {p.pid: p for p in me.children(recursive=True)}
processes[me.pid] = me
for p in psutil.process_iter(["cmdline"]):
    if session_dir in " ".join(p.info["cmdline"] or []):
        processes.setdefault(p.pid, p)
sockets = []
for p in processes.values():
    try:
        name, connections = p.name(), p.net_connections(kind="tcp")
    except psutil.Error:
        continue
    sockets += [
        {"pid": p.pid, "name": name, "ip": c.laddr.ip, "port": c.laddr.port}
        for c in connections
        if c.status == psutil.CONN_LISTEN
    ]
auth = os.environ.get("RAY_AUTH_MODE")
print(json.dumps({"sockets": sockets, "auth_mode": auth, "session_dir": session_dir}))
""".replace("PORT_FILES", repr(PORT_FILES))


def is_loopback(ip: str) -> bool:
    address = ipaddress.ip_address(ip.split("%")[0])
    mapped = getattr(address, "ipv4_mapped", None)
    return (mapped or address).is_loopback


def alive(identities: list[dict]) -> list[dict]:
    """The processes among ``identities`` still running (same pid and start, not zombie)."""
    running = []
    for identity in identities:
        try:
            process = psutil.Process(identity["pid"])
            if (
                abs(process.create_time() - identity["start"]) < 0.05
                and process.status() != psutil.STATUS_ZOMBIE
            ):
                running.append(identity)
        except psutil.Error:
            continue
    return running


def ray_processes_of(pid: int, timeout: float = 180) -> list[dict]:
    """The descendants of ``pid`` once its Ray's raylet and both agents run."""
    wanted = ("gcs_server", "raylet", "ray::Dashboard", "ray::RuntimeEnv")
    deadline = time.monotonic() + timeout
    while True:
        found = []
        for child in psutil.Process(pid).children(recursive=True):
            try:
                found.append({"pid": child.pid, "start": child.create_time(), "name": child.name()})
            except psutil.Error:
                continue
        names = [entry["name"] for entry in found]
        if all(any(name.startswith(w) for name in names) for w in wanted):
            return found
        assert time.monotonic() < deadline, f"Ray of driver {pid} not up: {names}"
        time.sleep(0.5)


@pytest.fixture(scope="module")
def killed_then_next_run(tmp_path_factory):
    """Run A's driver is SIGKILLed once its Ray is up; then run B starts and lists its sockets.

    Returns A's Ray processes, those still running right after the kill, those running after
    B started, and B's output (JSON) and log.
    """
    env = {**os.environ, SESSIONS_DIR_ENV: str(tmp_path_factory.mktemp("ray-sessions"))}
    driver = subprocess.Popen(
        [sys.executable, "-c", HOLD], env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        json.loads(driver.stdout.readline())
        processes = ray_processes_of(driver.pid)
    finally:
        driver.send_signal(signal.SIGKILL)
        driver.wait()
    left = alive(processes)
    run = subprocess.run(
        [sys.executable, "-c", LIST], env=env, capture_output=True, text=True, timeout=400
    )
    assert run.returncode == 0, run.stderr[-3000:]
    return {
        "processes": processes,
        "left_by_kill": left,
        "left_after_next_run": alive(processes),
        "next_run": json.loads(run.stdout.strip().splitlines()[-1]),
        "next_run_log": run.stderr,
    }


def test_a_run_listens_on_loopback_only(killed_then_next_run):
    """Every listening TCP socket of a run's Ray session is on 127.0.0.1 / ::1 (or the
    IPv4-mapped ::ffff:127.0.0.1); token auth stays as Ray sets it."""
    run = killed_then_next_run["next_run"]
    sockets = run["sockets"]
    names = {entry["name"] for entry in sockets}
    for server in ("gcs_server", "raylet", "ray::Dashboard", "ray::RuntimeEnv"):
        assert any(name.startswith(server) for name in names), (server, sockets)
    exposed = [entry for entry in sockets if not is_loopback(entry["ip"])]
    unbindable = [entry for entry in exposed if entry["name"] in CANNOT_BIND]
    assert exposed == unbindable, f"listening beyond loopback: {exposed}"
    expected_auth = os.environ.get("RAY_AUTH_MODE", "token")
    assert run["auth_mode"] == expected_auth
    if unbindable:
        assert run["auth_mode"] == "token", unbindable


def test_the_next_run_stops_what_a_killed_run_left(killed_then_next_run):
    """Ray's agents outlive a SIGKILLed driver (they wait on the dead GCS for about a minute);
    the next run's start stops them, by pid, and nothing but the killed run's processes."""
    agents = [
        entry
        for entry in killed_then_next_run["left_by_kill"]
        if entry["name"].startswith(("ray::Dashboard", "ray::RuntimeEnv"))
    ]
    assert len(agents) == 2, killed_then_next_run["left_by_kill"]
    log = killed_then_next_run["next_run_log"]
    stopped = {int(pid) for pid in re.findall(r"stopped pid (\d+)", log)}
    assert {entry["pid"] for entry in agents} <= stopped, log[-3000:]
    assert stopped <= {entry["pid"] for entry in killed_then_next_run["processes"]}
    assert killed_then_next_run["left_after_next_run"] == []


def test_cleanup_stops_only_recorded_processes_of_gone_drivers(tmp_path, monkeypatch):
    """``rerank-ray cleanup`` stops a recorded process of a gone driver, and spares a process
    whose pid matches but whose start time does not (a reused pid) and the processes of a live
    driver's record."""
    monkeypatch.setenv(SESSIONS_DIR_ENV, str(tmp_path))
    sleepers = [subprocess.Popen(["sleep", "300"]) for _ in range(4)]
    gone_driver, orphan, reused, kept = sleepers
    try:
        gone = record_session(
            psutil.Process(gone_driver.pid),
            "/tmp/ray/session_gone",
            [psutil.Process(orphan.pid), psutil.Process(reused.pid)],
        )
        record = json.loads(gone.read_text())
        record["processes"][1]["start"] -= 1000.0
        gone.write_text(json.dumps(record))
        live = record_session(psutil.Process(), "/tmp/ray/session_live", [psutil.Process(kept.pid)])
        gone_driver.kill()
        gone_driver.wait()

        result = subprocess.run(
            [sys.executable, "-m", "rerank_ray.cli", "cleanup"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr
        assert f"stopped pid {orphan.pid} (sleep) of /tmp/ray/session_gone" in result.stdout
        assert orphan.wait(timeout=10) == -signal.SIGTERM
        assert reused.poll() is None and kept.poll() is None
        assert not gone.exists() and live.exists()
        assert "stopped 1 process(es)" in result.stdout
    finally:
        for sleeper in sleepers:
            sleeper.kill()
            sleeper.wait()


def test_sessions_dir_is_private(tmp_path, monkeypatch):
    """The folder of records is created 0700 (other users cannot plant records)."""
    folder = tmp_path / "records"
    monkeypatch.setenv(SESSIONS_DIR_ENV, str(folder))
    path = record_session(psutil.Process(), "/tmp/ray/session_x", [])
    assert path.parent == folder and Path(folder).stat().st_mode & 0o777 == 0o700
