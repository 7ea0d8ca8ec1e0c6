"""A cluster that starts without GPU workers: the device policy must make its autoscaler launch
GPU nodes, and the model actors must run there.

The head runs Ray's fake-provider autoscaler (``provider: fake_multinode``, as
``ray.cluster_utils.AutoscalingCluster`` sets it up) with a CPU-only head and a worker type
declaring ``{"CPU": 2, "GPU": 1}`` at ``min_workers: 0``. It is started here with its own temp
dir and port, and stopped by killing only its own processes (``AutoscalingCluster.start`` would
run ``ray stop --force`` and kill every Ray on the machine). The GPUs are declared, not real:
torch still runs the models on the CPU, so the metrics must equal a ``--device cpu`` run's.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow  # its own Ray heads and fake GPU nodes

GPU_NODE = {"CPU": 2, "GPU": 1}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def autoscaling_head(tmp_path_factory):
    """``RAY_ADDRESS`` of a head whose autoscaler can launch GPU nodes, and the env to use."""
    import psutil

    temp_dir = Path(tempfile.mkdtemp(prefix="rr-as-"))  # short: Ray's socket paths live in it
    port = _free_port()
    config = {
        "cluster_name": "fake-gpu",
        "max_workers": 2,
        "upscaling_speed": 1.0,
        "idle_timeout_minutes": 1,
        "provider": {
            "type": "fake_multinode",
            "gcs_address": f"127.0.0.1:{port}",
            "use_node_id_as_ip": True,
            "disable_node_updaters": True,
            "disable_launch_config_check": True,
        },
        "auth": {"ssh_user": "ubuntu"},
        "available_node_types": {
            "ray.head.default": {"resources": {"CPU": 2}, "node_config": {}, "max_workers": 0},
            "gpu_worker": {
                "resources": GPU_NODE,
                "node_config": {},
                "min_workers": 0,
                "max_workers": 2,
            },
        },
        "head_node_type": "ray.head.default",
        **{k: [] for k in ("cluster_synced_files", "rsync_exclude", "rsync_filter")},
        **{
            k: []
            for k in (
                "initialization_commands",
                "setup_commands",
                "head_setup_commands",
                "worker_setup_commands",
                "head_start_ray_commands",
                "worker_start_ray_commands",
            )
        },  # fmt: skip
        "file_mounts": {},
        "file_mounts_sync_continuously": False,
    }
    config_path = temp_dir / "autoscaling.yaml"
    config_path.write_text(yaml.safe_dump(config))
    env = dict(
        os.environ,
        RAY_AUTH_MODE="token",
        RAY_USAGE_STATS_ENABLED="0",
        RAY_FAKE_CLUSTER="1",
        AUTOSCALER_UPDATE_INTERVAL_S="1",
    )
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env["PATH"]
    ray_cli = os.path.join(os.path.dirname(sys.executable), "ray")
    started = subprocess.run(
        [ray_cli, "start", "--head", f"--port={port}", "--node-ip-address=127.0.0.1",
         f"--autoscaling-config={config_path}", "--num-cpus=2", "--num-gpus=0",
         f"--temp-dir={temp_dir}", "--include-dashboard=false", "--disable-usage-stats",
         f"--dashboard-agent-listen-port={_free_port()}", f"--ray-client-server-port={_free_port()}"],
        env=env, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert started.returncode == 0, started.stdout[-2000:] + started.stderr[-2000:]
    for name in ("RAY_FAKE_CLUSTER", "AUTOSCALER_UPDATE_INTERVAL_S"):
        env.pop(name)
    env["RAY_ADDRESS"] = f"127.0.0.1:{port}"
    yield env
    # This head's processes only (the fake GPU nodes' raylets live under its temp dir too).
    for process in psutil.process_iter(["cmdline"]):
        if process.pid != os.getpid() and any(
            str(temp_dir) in part for part in process.info["cmdline"] or []
        ):
            process.kill()


def _run(env: dict, out: Path, *options: str) -> subprocess.CompletedProcess:
    shared = Path(__file__).resolve().parents[2] / "shared" / "data" / "msmarco-dev"
    return subprocess.run(
        [sys.executable, "-m", "rerank_ray.cli", "run", "--address", "auto",
         "--dataset", str(shared / "dev.jsonl"), "--corpus-rows", "30", "--num-queries", "3",
         "--embedder", "minilm", "--reranker", "minilm-smoke", "--top-k", "5",
         "--cache-dir", str(out.parent / "cache"), "--out", str(out), "-q", *options],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip


def test_a_plain_run_launches_gpu_nodes_and_matches_a_cpu_run(autoscaling_head, tmp_path):
    started = time.time()
    gpu = _run(autoscaling_head, tmp_path / "gpu")
    assert gpu.returncode == 0, gpu.stderr[-3000:]
    manifest = json.loads((tmp_path / "gpu" / "manifest.json").read_text())
    for stage, pool in (
        ("embed", manifest["stages"]["embed"]["corpus"]["resources"]),
        ("rerank", manifest["stages"]["rerank"]["systems"]["minilm-smoke"]["resources"]),
    ):
        assert pool["policy"] == "auto" and pool["device"] == "cuda", (stage, pool)
        # The first stage finds no GPU alive; later ones may find the nodes it launched.
        assert "autoscaler can launch" in pool["reason"] or stage != "embed", pool["reason"]
        assert pool["min_actors"] == 1 and pool["max_actors"] == 2  # two GPU nodes at most
        assert pool["num_gpus_per_actor"] == 1.0 and pool["actors_started"] >= 1
        assert pool["gpu_ids"], pool  # Ray gave the actors GPUs: they run on launched nodes
        assert pool["devices"] == ["cpu"]  # declared GPUs: torch chose the CPU
    search = manifest["stages"]["retrieve"]["resources"]
    assert search["device"] == "cuda" and search["num_gpus_per_task"] == 1
    # The fake provider names launched nodes ffff…0000N (N >= 1); the head is …00000.
    launched = [*pool["node_ids"], *search["node_ids"]]
    assert launched and all(not n.endswith("00000") for n in launched), launched

    cpu = _run(autoscaling_head, tmp_path / "cpu", "--device", "cpu")
    assert cpu.returncode == 0, cpu.stderr[-3000:]
    cpu_manifest = json.loads((tmp_path / "cpu" / "manifest.json").read_text())
    for pool in (
        cpu_manifest["stages"]["embed"]["corpus"]["resources"],
        cpu_manifest["stages"]["rerank"]["systems"]["minilm-smoke"]["resources"],
    ):
        assert pool["device"] == "cpu" and pool["num_gpus_per_actor"] == 0 and not pool["gpu_ids"]
    assert cpu_manifest["stages"]["retrieve"]["resources"]["num_gpus_per_task"] == 0
    gpu_metrics = json.loads((tmp_path / "gpu" / "metrics.json").read_text())
    cpu_metrics = json.loads((tmp_path / "cpu" / "metrics.json").read_text())
    assert gpu_metrics.keys() == cpu_metrics.keys() == {"retrieval", "minilm-smoke"}
    assert _close(gpu_metrics, cpu_metrics), (gpu_metrics, cpu_metrics)
    print(f"two runs on the autoscaling cluster: {time.time() - started:.0f} s")


def _close(first: dict, second: dict) -> bool:
    return all(
        first[stage][name] == pytest.approx(second[stage][name], abs=1e-6)
        for stage in first
        for name in first[stage]
    )


@pytest.mark.parametrize(
    "option,asked",
    [
        (["--device", "cuda"], "--device cuda"),
        (["--num-gpus-per-actor", "1"], "--num-gpus-per-actor 1"),
    ],
)
def test_gpus_asked_of_a_cluster_that_can_never_have_one_fail_in_one_line(tmp_path, option, asked):
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    shared = Path(__file__).resolve().parents[2] / "shared" / "data" / "msmarco-dev"
    completed = subprocess.run(
        [sys.executable, "-m", "rerank_ray.cli", "run", *option,
         "--dataset", str(shared / "dev.jsonl"), "--corpus-rows", "10", "--num-queries", "2",
         "--embedder", "minilm", "--reranker", "none", "--out", str(tmp_path / "run")],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert completed.returncode == 2, completed.stderr[-2000:]
    errors = [line for line in completed.stderr.splitlines() if "error" in line.lower()]
    assert errors == [
        f"rerank-ray: error: {asked}: the cluster has no GPU and cannot launch one (no autoscaler)"
    ], completed.stderr[-2000:]
    assert "Traceback" not in completed.stderr
    assert not (tmp_path / "run" / "data").exists()  # refused before any work


#: Prints the GCS address of the Ray that a driver ends up on: a bare ``ray.init()`` or, with
#: ``cli``, the way a run without --address connects.
WHICH_RAY = """
import sys, ray

if sys.argv[1] == "cli":
    from rerank_ray.local_ray import connect_ray
    connect_ray(None)
else:
    ray.init()
print("GCS", ray.get_runtime_context().gcs_address, flush=True)
ray.shutdown()
"""


def test_a_plain_run_never_joins_the_cluster_recorded_in_rays_temp_dir():
    """A cluster recorded in Ray's temp dir (``ray_current_cluster``, which a bare
    ``ray.init()`` joins) is left alone: a run without --address or RAY_ADDRESS starts its
    own Ray. The bare ``ray.init()`` in the same environment is the control."""
    import psutil

    temp_dir = tempfile.mkdtemp(prefix="rr-tmp-")  # Ray's temp dir is RAY_TMPDIR/ray
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(RAY_TMPDIR=temp_dir, RAY_AUTH_MODE="token", RAY_USAGE_STATS_ENABLED="0")
    ray_cli = os.path.join(os.path.dirname(sys.executable), "ray")
    try:
        started = subprocess.run(
            [ray_cli, "start", "--head", f"--port={port}", "--node-ip-address=127.0.0.1",
             "--num-cpus=1", "--include-dashboard=false", "--disable-usage-stats",
             f"--dashboard-agent-listen-port={_free_port()}",
             f"--ray-client-server-port={_free_port()}"],
            env=env, capture_output=True, text=True, timeout=180,
        )  # fmt: skip
        assert started.returncode == 0, started.stdout[-2000:] + started.stderr[-2000:]
        recorded = Path(temp_dir, "ray", "ray_current_cluster").read_text().strip()
        assert recorded.endswith(f":{port}")

        def gcs_of(mode: str) -> str:
            done = subprocess.run(
                [sys.executable, "-c", WHICH_RAY, mode],
                env=env, capture_output=True, text=True, timeout=300,
            )  # fmt: skip
            assert done.returncode == 0, done.stderr[-3000:]
            return [line for line in done.stdout.splitlines() if line.startswith("GCS ")][0][4:]

        assert gcs_of("bare") == recorded  # the control: a bare ray.init() joins it
        assert not gcs_of("cli").endswith(f":{port}")
    finally:
        for process in psutil.process_iter(["cmdline"]):
            if process.pid != os.getpid() and any(
                temp_dir in part for part in process.info["cmdline"] or []
            ):
                process.kill()
