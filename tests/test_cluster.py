"""Clusters: the launcher config against Ray's schema, the KubeRay job, job submission to a
local head, and actor placement on a simulated cluster whose nodes declare GPUs."""

from __future__ import annotations

import copy
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
import zipfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml

from rerank_ray.cli import build_parser, config_from_args, main
from rerank_ray.embed import embedding_matrix
from rerank_ray.submit import job_arguments, job_working_dir, upload_excludes

REPO = Path(__file__).resolve().parents[1]


def _validate(config: dict) -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(copy.deepcopy(config)))


def test_cluster_yaml_passes_rays_schema_check():
    config = yaml.safe_load((REPO / "cluster.yaml").read_text())
    _validate(config)
    assert config["docker"]["image"].startswith("rayproject/ray:2.60.0")
    assert any("--dashboard-host=127.0.0.1" in c for c in config["head_start_ray_commands"])
    workers = {
        k: v for k, v in config["available_node_types"].items() if k != config["head_node_type"]
    }
    assert {v["node_config"]["InstanceType"] for v in workers.values()} == {
        "g5.xlarge",
        "p4d.24xlarge",
    }
    # GPU node types start at zero and declare their GPUs, which the device policy reads.
    assert {w["min_workers"] for w in workers.values()} == {0}
    assert {w["resources"]["GPU"] for w in workers.values()} == {1, 8}
    broken = copy.deepcopy(config)
    broken["available_node_types"]["gpu_1x"]["max_wokers"] = 2  # a typo the schema must catch
    with pytest.raises(Exception, match="max_wokers"):
        _validate(broken)


def test_rayjob_entrypoint_is_a_valid_pipeline_command():
    job = yaml.safe_load((REPO / "cluster" / "rayjob.yaml").read_text())
    assert job["kind"] == "RayJob" and job["spec"]["rayClusterSpec"]["rayVersion"] == "2.60.0"
    python, script, *options = shlex.split(job["spec"]["entrypoint"])
    assert script.endswith("jobs/pipeline.py")
    config = config_from_args(build_parser().parse_args(["run", *options]))
    assert config.embedder == "BAAI/bge-m3" and config.rerank.models == ("BAAI/bge-reranker-large",)
    worker = job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][
        0
    ]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == "1"


def test_job_arguments_pick_the_entrypoint_and_make_local_paths_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "dev.jsonl").write_text("{}\n")
    command = job_arguments(
        [
            "rerank",
            "--run",
            "runs/a",
            "--dataset=dev.jsonl",
            "--reranker",
            "minilm-smoke",
            "--corpus",
            "s3://b/c.parquet",
        ]
    )
    assert command == [
        "python", "jobs/rerank.py", "--run", str(tmp_path / "runs" / "a"),
        f"--dataset={tmp_path / 'dev.jsonl'}", "--reranker", "minilm-smoke", "--corpus", "s3://b/c.parquet",
    ]  # fmt: skip
    with pytest.raises(Exception, match="one of run, embed"):
        job_arguments(["--out", "x"])


def test_submit_sends_the_installed_project_or_a_working_dir_that_holds_the_entrypoint(
    tmp_path, capsys
):
    import rerank_ray

    root = job_working_dir("jobs/pipeline.py")
    assert root == Path(rerank_ray.__file__).resolve().parents[1]
    assert (root / "jobs" / "pipeline.py").is_file() and (root / "rerank_ray" / "cli.py").is_file()
    assert job_working_dir("jobs/rerank.py", str(REPO)) == REPO
    # Checked before the (unreachable) job server is contacted: one line, exit 2.
    code = main(
        ["submit", "--address", "http://127.0.0.1:9", "--working-dir", str(tmp_path), "--",
         "run", "--out", str(tmp_path / "out")]
    )  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert err.startswith(f"rerank-ray: error: --working-dir {tmp_path}: no jobs/pipeline.py there")


def test_submit_of_a_package_installed_without_jobs_asks_for_a_working_dir(tmp_path):
    site = tmp_path / "site-packages"
    site.mkdir()
    shutil.copytree(REPO / "rerank_ray", site / "rerank_ray")  # as a wheel installs it: no jobs/
    env = dict(os.environ, PYTHONPATH=str(site))
    completed = subprocess.run(
        [sys.executable, "-m", "rerank_ray.cli", "submit", "--address", "http://127.0.0.1:9",
         "--", "run", "--out", "out"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert completed.returncode == 2, completed.stderr[-2000:]
    assert completed.stderr.count("\n") == 1 and "pass --working-dir" in completed.stderr
    assert str(site / "rerank_ray") in completed.stderr


def test_submit_excludes_keep_secrets_and_gitignored_files_out_of_rays_package(tmp_path):
    """Ray's own working_dir packer with the excludes submit passes; .gitignore reading off, as
    under RAY_RUNTIME_ENV_IGNORE_GITIGNORE=1, so the .gitignore rule comes from the excludes."""
    from ray._private.runtime_env.packaging import create_package

    project = tmp_path / "project"
    kept = [
        "jobs/pipeline.py",
        "rerank_ray/cli.py",
        "rerank_ray/keys.py",
        "env.md",
        "important.log",
    ]
    left_out = [
        ".env", ".env.local", "sub/.env", "id_rsa", "id_rsa.pub", "sub/id_ed25519", "id_ecdsa",
        "server.pem", "sub/tls.key", "cert.p12", ".netrc", ".aws/credentials", ".ssh/config",
        "sub/.ssh/known_hosts", "runs/a/metrics.json", ".venv/bin/python", "notes.log",
    ]  # fmt: skip
    for name in kept + left_out:
        (project / name).parent.mkdir(parents=True, exist_ok=True)
        (project / name).write_text(name)
    # The .gitignore's own negation brings back its file, never a secret.
    (project / ".gitignore").write_text("*.log\n!important.log\n!.env\n")
    package = tmp_path / "package.zip"
    create_package(
        str(project), package, include_gitignore=False, excludes=upload_excludes(project)
    )
    names = set(zipfile.ZipFile(package).namelist())
    assert names == {*kept, ".gitignore"}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def local_head(tmp_path_factory):
    """`ray start --head` on loopback, as the README shows, with token authentication."""
    env = dict(os.environ, RAY_AUTH_MODE="token", RAY_USAGE_STATS_ENABLED="0")
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env["PATH"]
    dashboard_port = _free_port()
    temp_dir = tmp_path_factory.mktemp("ray-head")  # in every process's command line
    head = subprocess.Popen(
        [
            os.path.join(os.path.dirname(sys.executable), "ray"), "start", "--head", "--block",
            "--node-ip-address=127.0.0.1", f"--port={_free_port()}", "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dashboard_port}", "--num-cpus=2", "--disable-usage-stats",
            f"--temp-dir={temp_dir}",
            # Ports Ray fixes by default: another Ray on this machine may hold them.
            f"--dashboard-agent-listen-port={_free_port()}", f"--ray-client-server-port={_free_port()}",
        ],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    address = f"http://127.0.0.1:{dashboard_port}"
    deadline = time.time() + 90
    while True:
        probe = subprocess.run(
            [sys.executable, "-c", f"from ray.job_submission import JobSubmissionClient as C; C('{address}')"],
            env=env, capture_output=True,
        )  # fmt: skip
        if probe.returncode == 0:
            break
        assert head.poll() is None and time.time() < deadline, probe.stderr.decode()[-1000:]
        time.sleep(1)
    yield address, env, temp_dir
    # Stop this head's processes only: `ray stop` would also stop the test session's Ray.
    import psutil

    os.killpg(head.pid, signal.SIGKILL)
    for process in psutil.process_iter(["cmdline"]):
        if any(str(temp_dir) in part for part in process.info["cmdline"] or []):
            process.kill()
    head.wait(timeout=30)


@pytest.mark.slow
def test_ray_job_submit_and_rerank_ray_submit_on_a_local_head(local_head, msmarco, tmp_path):
    address, env, _ = local_head
    options = [
        "--dataset", str(msmarco / "dev.jsonl"), "--corpus-rows", "60", "--num-queries", "6",
        "--embedder", "minilm", "--reranker", "none", "--top-k", "10", "-q",
        "--cache-dir", str(tmp_path / "cache"),  # the second job reuses the first's vectors
    ]  # fmt: skip
    ray_cli = os.path.join(os.path.dirname(sys.executable), "ray")
    plain = subprocess.run(
        [ray_cli, "job", "submit", "--address", address, "--working-dir", str(REPO),
         "--runtime-env-json", json.dumps({"excludes": [".venv", ".git", "runs"]}),
         "--", "python", "jobs/pipeline.py", *options, "--out", str(tmp_path / "plain")],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert plain.returncode == 0, plain.stdout[-2000:] + plain.stderr[-2000:]
    ours = subprocess.run(
        [sys.executable, "-m", "rerank_ray.cli", "submit", "--address", address, "--working-dir", str(REPO),
         "--", "run", *options, "--out", str(tmp_path / "ours")],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert ours.returncode == 0, ours.stdout[-2000:] + ours.stderr[-2000:]
    assert "succeeded" in ours.stderr and "| retrieval |" in ours.stdout
    first = json.loads((tmp_path / "plain" / "metrics.json").read_text())
    assert json.loads((tmp_path / "ours" / "metrics.json").read_text()) == first
    failing = subprocess.run(
        [sys.executable, "-m", "rerank_ray.cli", "submit", "--address", address, "--working-dir", str(REPO),
         "--", "run", "--dataset", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "bad")],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert failing.returncode == 1 and "failed" in failing.stderr
    assert "missing.jsonl: no such file" in failing.stdout


@pytest.mark.slow
def test_submit_from_another_folder_sends_the_project_and_no_secrets(local_head, msmarco, tmp_path):
    address, env, temp_dir = local_head
    marker = f"secret-{uuid.uuid4().hex}"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / ".env").write_text(f"API_TOKEN={marker}\n")
    (elsewhere / "id_rsa").write_text(f"-----BEGIN OPENSSH PRIVATE KEY-----\n{marker}\n")
    env = dict(env, PYTHONPATH=os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]))
    completed = subprocess.run(
        [sys.executable, "-m", "rerank_ray.cli", "submit", "--address", address, "--",
         "run", "--dataset", str(msmarco / "dev.jsonl"), "--corpus-rows", "20", "--num-queries", "3",
         "--embedder", "minilm", "--reranker", "none", "--top-k", "5", "-q",
         "--cache-dir", str(tmp_path / "cache"), "--out", "out"],
        cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stdout[-2000:] + completed.stderr[-2000:]
    assert "succeeded" in completed.stderr
    assert json.loads((elsewhere / "out" / "metrics.json").read_text())  # --out relative to cwd
    job_id = completed.stderr.split("submitted job ", 1)[1].split()[0]
    info = subprocess.run(
        [sys.executable, "-c", "import sys; from ray.job_submission import JobSubmissionClient as C;"
         " print(C(sys.argv[1]).get_job_info(sys.argv[2]).runtime_env['working_dir'])",
         address, job_id],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    uri = info.stdout.strip()
    assert info.returncode == 0 and uri.startswith("gcs://_ray_pkg_"), info.stderr[-2000:]
    # The head unpacked the job's package under its --temp-dir.
    unpacked = [
        p for p in temp_dir.rglob(uri.removeprefix("gcs://").removesuffix(".zip")) if p.is_dir()
    ]
    assert unpacked, f"{uri} not unpacked under {temp_dir}"
    for package in unpacked:
        files = [p for p in package.rglob("*") if p.is_file()]
        names = {p.relative_to(package).as_posix() for p in files}
        assert "jobs/pipeline.py" in names and "rerank_ray/submit.py" in names
        assert not {".env", "id_rsa"} & {Path(name).name for name in names}
        assert _files_holding(package, marker.encode()) == []
    # Nothing the head keeps (packages, logs) holds the secret.
    assert _files_holding(temp_dir, marker.encode()) == []


def _files_holding(folder: Path, needle: bytes) -> list[Path]:
    """Regular files under ``folder`` whose bytes contain ``needle`` (files that vanish: skipped)."""
    found = []
    for path in folder.rglob("*"):
        try:
            if path.is_file() and not path.is_symlink() and needle in path.read_bytes():
                found.append(path)
        except OSError:
            continue
    return found


@pytest.mark.slow
def test_simulated_gpu_nodes_get_one_actor_each_and_match_the_cpu_run(
    msmarco, tmp_path, minilm_path
):
    import pyarrow as pa

    from rerank_ray.embedder import Embedder, EmbedderOptions

    with open(msmarco / "dev.jsonl") as handle:
        texts = [json.loads(next(handle))["positive"][0] for _ in range(80)]
    corpus = tmp_path / "corpus.parquet"
    pq.write_table(pa.table({"pid": [f"{i:03d}" for i in range(80)], "text": texts}), corpus)
    result_path = tmp_path / "result.json"
    script = REPO / "tests" / "simulated_gpu_cluster.py"
    completed = subprocess.run(
        [sys.executable, str(script), str(corpus), str(tmp_path / "out"), str(result_path)],
        capture_output=True, text=True, timeout=400,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr[-3000:]
    result = json.loads(result_path.read_text())
    resources = result["stats"]["resources"]
    assert (
        resources["min_actors"] == resources["max_actors"] == 2
        and resources["num_gpus_per_actor"] == 1.0
    )  # one per declared GPU
    assert resources["actors_started"] == 2 and resources["nodes"] == 2  # on the two GPU nodes
    assert resources["devices"] == ["cpu"]  # CUDA absent: torch chose the CPU
    assert resources["tokenized_upstream"] is True  # GPU actors: CPU tasks tokenize ahead
    table = pq.read_table(tmp_path / "out").sort_by("pid")
    assert table["pid"].to_pylist() == [f"{i:03d}" for i in range(80)]
    expected = Embedder("minilm", EmbedderOptions(), device="cpu").encode_corpus(texts)
    vectors = embedding_matrix(table["embedding"])
    assert np.min(np.sum(vectors * expected, axis=1)) > 0.9999

    # The search tasks reserved one GPU each, so they ran on the GPU nodes, on the CPU.
    search = result["search"]["resources"]
    assert search["num_gpus_per_task"] == 1 and search["devices"] == ["cpu"]
    assert set(search["node_ids"]) <= set(result["gpu_node_ids"]) and search["tasks"] >= 2
    retrieval = pq.read_table(str(tmp_path / "out") + "-retrieval.parquet").sort_by(
        [("qid", "ascending"), ("rank", "ascending")]
    )
    pids = np.array(table["pid"].to_pylist())
    wide = vectors.astype(np.float64)
    for q in range(5):
        scores = wide @ wide[q]
        expected_ids = pids[np.lexsort((pids, -scores))[:10]].tolist()
        assert retrieval["pid"].to_pylist()[q * 10 : (q + 1) * 10] == expected_ids
