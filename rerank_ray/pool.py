"""Ray plumbing shared by the model stages: the device policy, actor pools and their counters.

The device policy decides, once per stage, whether actors and search tasks ask Ray for GPUs:

* ``cpu``: never.
* ``cuda``: always; refused in one line when no node of the cluster has a GPU and its
  autoscaler cannot launch one.
* ``auto``: GPUs when the cluster has them now **or its autoscaler can launch nodes that have
  them**; otherwise CPUs, with the reason. Asking for a GPU is what makes an autoscaler add a
  GPU node: planning from the alive nodes alone would keep a cluster that starts without GPU
  workers on its head's CPUs forever.

Which node types an autoscaler can launch is read from Ray, not guessed: the cluster config
that autoscaler v2 and KubeRay report to the GCS, else the autoscaling config that the
cluster's autoscaler monitor (v1, ``ray up``) reads on the head node. Ray only *declares*
GPUs: inside an actor, torch decides the device (:func:`rerank_ray.models.pick_device`).

Example:
    >>> plan = decide_device("auto", ClusterGpus(now=0, launchable=4, source="autoscaler"))
    >>> plan.device, plan.max_gpus
    ('cuda', 4)
    >>> decide_device("auto", ClusterGpus(now=0, launchable=0, source="no autoscaler")).device
    'cpu'
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass, fields

from rerank_ray.errors import ConfigError

log = logging.getLogger("rerank_ray")

DEVICE_POLICIES = ("auto", "cuda", "cpu")


@dataclass(frozen=True)
class ClusterGpus:
    """GPUs of the connected cluster.

    Args:
        now: GPUs on alive nodes.
        launchable: Most GPUs the autoscaler can add (0: none; ``None``: unknown, an autoscaler
            runs but its node types could not be read).
        source: Where ``launchable`` was read.
    """

    now: int
    launchable: int | None
    source: str

    @property
    def most(self) -> int:
        """The most GPUs the cluster can have at once (as far as is known)."""
        return max(self.now, self.launchable or 0)


@dataclass(frozen=True)
class DevicePlan:
    """What a stage asks Ray for: ``cuda`` (GPUs) or ``cpu``, and why."""

    policy: str
    device: str
    reason: str
    max_gpus: int


def decide_device(
    policy: str, gpus: ClusterGpus, asked: tuple[str, object] = ("device", "cuda")
) -> DevicePlan:
    """Apply the device ``policy`` to what the cluster has or can launch (``asked``, the
    :class:`~rerank_ray.config.ComputeConfig` field and value that asked for GPUs, names the
    request in a refusal).

    Raises:
        ConfigError: ``cuda`` on a cluster that has no GPU and whose autoscaler is known to
            launch none.
    """
    if policy not in DEVICE_POLICIES:
        raise ConfigError(f"device must be one of {', '.join(DEVICE_POLICIES)}, got {policy!r}")
    if policy == "cpu":
        return DevicePlan(policy, "cpu", "device cpu asked for", 0)
    if gpus.now:
        return DevicePlan(policy, "cuda", f"{gpus.now} GPUs on alive nodes", gpus.most)
    if gpus.launchable:
        reason = f"the autoscaler can launch nodes with {gpus.launchable} GPUs ({gpus.source})"
        return DevicePlan(policy, "cuda", reason, gpus.most)
    if gpus.launchable is None:
        if policy == "cuda":
            reason = f"GPUs requested; the autoscaler's node types are unknown ({gpus.source})"
            return DevicePlan(policy, "cuda", reason, 1)
        reason = (
            f"no GPU on alive nodes and the autoscaler's node types are unknown ({gpus.source});"
            " device cuda requests GPUs anyway"
        )
        return DevicePlan(policy, "cpu", reason, 0)
    if policy == "cuda":
        from rerank_ray.config import ComputeConfig

        name, value = asked
        raise ConfigError(
            f"{name} {value}: the cluster has no GPU and cannot launch one ({gpus.source})",
            ComputeConfig,
            name,
        )
    return DevicePlan(policy, "cpu", f"no GPU on alive nodes and {gpus.source}", 0)


#: GPUs the autoscaler can launch, per cluster (the node types do not change during a run).
_LAUNCHABLE: dict[str, tuple[int | None, str]] = {}


def refuse_missing_gpus(device: str, num_gpus_per_actor: float | None) -> None:
    """Refuse, before any work, GPUs asked for (``device`` ``cuda`` or GPUs per actor) that
    the connected cluster neither has nor can launch (:func:`decide_device`)."""
    if device == "cuda":
        decide_device("cuda", cluster_gpus(), ("device", "cuda"))
    elif num_gpus_per_actor:
        decide_device("cuda", cluster_gpus(), ("num_gpus_per_actor", f"{num_gpus_per_actor:g}"))


def cluster_gpus() -> ClusterGpus:
    """GPUs of the connected Ray cluster: alive now, and launchable by its autoscaler."""
    import ray

    now = int(ray.cluster_resources().get("GPU", 0))
    cluster = ray.get_runtime_context().gcs_address
    if cluster not in _LAUNCHABLE:
        _LAUNCHABLE[cluster] = _launchable_gpus()
    launchable, source = _LAUNCHABLE[cluster]
    return ClusterGpus(now=now, launchable=launchable, source=source)


def _launchable_gpus() -> tuple[int | None, str]:
    """(GPUs, source) from the cluster config reported to the GCS, else from the head's
    autoscaler monitor."""
    from ray._private.state import state

    reported = state.get_max_resources_from_cluster_config()
    if reported:
        return int(min(reported.get("GPU", 0), 1 << 30)), "the cluster config reported to the GCS"
    import ray

    gcs_address = ray.get_runtime_context().gcs_address
    here = ray.get_runtime_context().get_node_id()
    on_head = any(
        n["NodeID"] == here and "node:__internal_head__" in n["Resources"] for n in ray.nodes()
    )
    if on_head:  # the driver runs on the head node (a local Ray, or a Ray job's driver)
        found = _monitor_node_types(gcs_address)
    else:
        head = ray.remote(num_cpus=0, resources={"node:__internal_head__": 0.001})
        found = ray.get(head(_monitor_node_types).remote(gcs_address), timeout=120)
    if found is None:
        return 0, "no autoscaler"
    node_types, path = found
    if node_types is None:
        return None, f"cannot read {path}"
    gpus = sum(
        int(spec.get("resources", {}).get("GPU", 0)) * int(spec.get("max_workers", 0))
        for spec in node_types.values()
    )
    return gpus, f"node types of {path}"


def _monitor_node_types(gcs_address: str) -> tuple[dict | None, str] | None:
    """On the head node: the node types of the autoscaling config that this cluster's
    autoscaler monitor reads, or ``None`` when it runs without one (no autoscaler).

    The monitor is the process of ``ray/autoscaler/.../monitor.py`` whose ``--gcs-address``
    port is this cluster's (a machine may run several clusters).
    """
    import psutil
    import yaml

    port = gcs_address.rsplit(":", 1)[-1]
    for process in psutil.process_iter(["cmdline"]):
        args = process.info["cmdline"] or []
        if not any(a.endswith("monitor.py") and "autoscaler" in a for a in args):
            continue
        values = dict(a[2:].split("=", 1) for a in args if a.startswith("--") and "=" in a)
        if values.get("gcs-address", "").rsplit(":", 1)[-1] != port:
            continue
        path = values.get("autoscaling-config")
        if not path:
            return None
        path = os.path.expanduser(path)
        try:
            with open(path, encoding="utf-8") as handle:
                config = yaml.safe_load(handle)
            return dict(config["available_node_types"]), path
        except (OSError, KeyError, TypeError, yaml.YAMLError):
            return None, path
    return None


@dataclass(frozen=True)
class ActorResources:
    """The actor pool of a model stage.

    Args:
        min_actors: Actors the pool starts with.
        max_actors: Most actors it grows to (Ray Data's autoscaling actor pool; equal to
            ``min_actors`` for a fixed pool).
        num_gpus_per_actor: GPUs each actor reserves (0 on CPUs).
        num_cpus_per_actor: CPUs each actor reserves from Ray.
        threads_per_actor: torch intra-op threads in each actor.
        policy: The device policy asked for.
        device: ``cuda`` when the actors ask for GPUs, else ``cpu``.
        reason: Why that device.
    """

    min_actors: int
    max_actors: int
    num_gpus_per_actor: float
    num_cpus_per_actor: float
    threads_per_actor: int
    policy: str = "auto"
    device: str = "cpu"
    reason: str = ""

    @property
    def actors(self) -> int:
        """The most actors the pool can have."""
        return self.max_actors

    def to_dict(self) -> dict:
        return asdict(self)


def plan_resources(
    device: str = "auto",
    num_actors: int | None = None,
    max_actors: int | None = None,
    gpus_per_actor: float | None = None,
) -> ActorResources:
    """Size an actor pool on the connected Ray cluster under a device policy.

    On GPUs the pool autoscales from 1 actor to ``max_actors`` (default: one per GPU the
    cluster has or can launch); on CPUs it is one actor unless ``max_actors`` says more;
    ``num_actors`` fixes the size either way. A node's cores are shared among its CPU
    actors as torch threads, while Ray's CPU reservation leaves one core's worth free for the
    reading and writing tasks that feed them.
    """
    import ray

    if num_actors is not None and max_actors is not None:
        raise ConfigError(
            "num_actors (a fixed pool) and max_actors (an autoscaling pool) exclude each other"
        )
    policy = "cuda" if device == "auto" and gpus_per_actor else device
    plan = decide_device(policy, cluster_gpus())
    if gpus_per_actor and plan.device == "cpu":
        raise ConfigError(f"num_gpus_per_actor {gpus_per_actor} with device {device}")
    if plan.device == "cuda":
        gpus_per_actor = gpus_per_actor or 1.0
        most = max(1, int(plan.max_gpus // gpus_per_actor))
    else:
        gpus_per_actor, most = 0.0, 1
    if num_actors is not None:
        low = high = num_actors
    else:
        low, high = 1, max_actors or most
    if plan.device == "cpu" and num_actors is None and max_actors is None:
        low = high = 1
    total_cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    cpus_per_node = max(int(n["Resources"].get("CPU", 1)) for n in nodes) if nodes else total_cpus
    actors_per_node = max(1, -(-high // max(1, len(nodes))))
    threads = max(1, cpus_per_node // actors_per_node)
    # Leave one CPU per node unreserved: Ray Data's read, repartition and write tasks need
    # it, and a pool that reserves every CPU waits forever for its input.
    cpus_per_actor = min(1.0, max(0.25, (cpus_per_node - 1) / actors_per_node))
    if plan.device == "cuda":
        threads = 1  # the model runs on the GPU; tokenizing runs in upstream CPU tasks
    resources = ActorResources(
        min_actors=low,
        max_actors=high,
        num_gpus_per_actor=gpus_per_actor,
        num_cpus_per_actor=cpus_per_actor,
        threads_per_actor=threads,
        policy=device,
        device=plan.device,
        reason=plan.reason,
    )
    log.info("device %s (%s): %s", plan.device, plan.reason, _pool_text(resources))
    return resources


def _pool_text(resources: ActorResources) -> str:
    size = (
        f"{resources.min_actors} actors"
        if resources.min_actors == resources.max_actors
        else f"{resources.min_actors} to {resources.max_actors} actors"
    )
    gpus = f", {resources.num_gpus_per_actor:g} GPU each" if resources.num_gpus_per_actor else ""
    return size + gpus


class _Counters:
    """Totals that a pool's actors report (rows, truncated texts, tokens); one per stage run.

    Counts of a batch that Ray retried after a failure are added again: the totals are exact
    for undisturbed runs and upper bounds otherwise.
    """

    def __init__(self):
        self.totals: dict[str, int] = {}
        self.actors: list[dict] = []

    def add(self, counts: dict[str, int]) -> None:
        for key, value in counts.items():
            self.totals[key] = self.totals.get(key, 0) + value

    def started(self, actor: dict) -> None:
        self.actors.append(actor)

    def get(self) -> dict[str, int]:
        return self.totals

    def started_actors(self) -> list[dict]:
        return self.actors


def announce_actor(counters, device: str) -> None:
    """Tell ``counters`` where this actor runs: node, the GPUs Ray gave it, and torch's device.

    Without ``counters`` (an actor built outside Ray) nothing is sent and Ray is not imported.
    """
    if counters is None:
        return
    import ray

    context = ray.get_runtime_context()
    ray.get(
        counters.started.remote(
            {
                "node_id": context.get_node_id(),
                "gpu_ids": [str(g) for g in ray.get_gpu_ids()],
                "device": device,
                "pid": os.getpid(),
            }
        )
    )


def report_counts(counters, stats, before: tuple | None, prefix: str = "") -> tuple:
    """Send the growth of a model's :class:`~rerank_ray.embedder.BatchStats` since ``before``
    (``None``: since the start); return the new mark.

    With a ``prefix`` (a role), the counts are named ``<prefix>.rows`` and so on.
    """
    names = [f.name for f in fields(stats)]
    now = tuple(getattr(stats, name) for name in names)
    before = before or tuple(0 for _ in names)
    if counters is not None:
        names = [f"{prefix}.{name}" if prefix else name for name in names]
        import ray

        # Waited for (one small round trip per call), so the totals are complete when the
        # dataset finishes.
        ray.get(counters.add.remote({n: a - b for n, a, b in zip(names, now, before)}))
    return now


def map_with_actor_pool(
    dataset, actor_class, constructor_kwargs: dict, resources: ActorResources, rows_per_call: int
):
    """``dataset.map_batches`` through a pool of ``actor_class`` sized by ``resources``.

    Each actor also gets ``threads`` and a ``counters`` handle (returned, for
    :func:`collect_counters`).
    """
    import ray
    from ray.data import ActorPoolStrategy

    counters = ray.remote(num_cpus=0)(_Counters).remote()  # it only adds numbers
    mapped = dataset.map_batches(
        actor_class,
        fn_constructor_kwargs={
            **constructor_kwargs,
            "threads": resources.threads_per_actor,
            "counters": counters,
        },
        batch_format="pyarrow",
        batch_size=rows_per_call,
        compute=ActorPoolStrategy(min_size=resources.min_actors, max_size=resources.max_actors),
        num_gpus=resources.num_gpus_per_actor,
        num_cpus=resources.num_cpus_per_actor,
    )
    return mapped, counters


def collect_counters(counters, resources: ActorResources) -> tuple[dict, dict]:
    """The pool's totals and the resources it used: the plan, plus the actors started, their
    nodes, the GPU ids Ray gave them and torch's devices. Then the counters actor is released."""
    import ray

    counts = ray.get(counters.get.remote())
    started = ray.get(counters.started_actors.remote())
    ray.kill(counters)
    used = {
        **resources.to_dict(),
        "actors_started": len(started),
        "nodes": len({a["node_id"] for a in started}),
        "node_ids": sorted({a["node_id"] for a in started}),
        "devices": sorted({a["device"] for a in started}),
        "gpu_ids": sorted({g for a in started for g in a["gpu_ids"]}),
    }
    return counts, used


@dataclass(frozen=True)
class StageStats:
    """What a stage reports to the manifest."""

    rows: int
    wall_seconds: float
    resources: dict
    counts: dict | None = None

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.wall_seconds if self.wall_seconds > 0 else 0.0

    def to_dict(self) -> dict:
        return {
            "rows": self.rows,
            "wall_seconds": round(self.wall_seconds, 3),
            "rows_per_second": round(self.rows_per_second, 3),
            "resources": self.resources,
            **({"counts": self.counts} if self.counts else {}),
        }
