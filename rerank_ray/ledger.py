"""The bookkeeping of one run directory: who holds it, its manifest, what each stage's output
was computed from, and the commit of a stage.

Rules this module enforces:

* A :class:`RunLedger` claims its run directory before anything else and holds it until
  :meth:`~RunLedger.close` (one writer; see :mod:`rerank_ray.rundir`).
* Every stage's output is keyed by its inputs and options and the key of the stage before it
  (:meth:`~RunLedger.stage_key`); a stage reads nothing stale (:meth:`~RunLedger.require_upstream`).
* The manifest's record of a stage is its commit point (:meth:`~RunLedger._timed`): it is
  removed when the stage starts, with everything later stages wrote, and written last.
  A stage whose outputs stand together (:attr:`rerank_ray.stages.Stage.whole`) loses its
  last outputs when it starts and what it wrote when it fails.

:class:`rerank_ray.pipeline.Pipeline` runs the stages on top of it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from rerank_ray.config import RunConfig
from rerank_ray.datasets import PreparedData
from rerank_ray.errors import ConfigError
from rerank_ray.export import exported_paths
from rerank_ray.inputs import RunInputs, library_versions
from rerank_ray.io import discard, exists, join
from rerank_ray.keys import digest
from rerank_ray.rundir import RunDirectory
from rerank_ray.stages import STAGE_TABLE, STAGES, command_running
from rerank_ray.systems import SINGLE_RERANKER_FILES

log = logging.getLogger("rerank_ray")


class RunLedger:
    """One claimed run directory, its manifest and its stages' keys and commits.

    Constructing one claims the run directory (:meth:`RunDirectory.claim`) before anything
    else: a folder that is not a run directory, or one another run holds, is refused with a
    :class:`ConfigError` and left as it was.
    """

    def __init__(self, config: RunConfig):
        self.config = config
        self.run = RunDirectory(config.out)
        self._lock = self.run.claim()
        try:
            self.manifest = self.run.read_manifest()
        except BaseException:
            self._lock.release()
            raise
        self.manifest["config"] = config.to_dict()
        self.manifest.setdefault("models", {})
        self.manifest.setdefault("stages", {})
        self.manifest["versions"] = library_versions()
        self.inputs = RunInputs(config, self.manifest)

    def close(self) -> None:
        """Release the run directory (idempotent); the pipeline writes nothing afterwards."""
        self._lock.release()

    def __enter__(self) -> RunLedger:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _record(self, stage: str, stats: dict) -> None:
        self.manifest["stages"][stage] = stats
        self.run.write_manifest(self.manifest)

    def _prepared(self) -> PreparedData:
        if "data" not in self.manifest:
            command = command_running("prepare").name
            raise ConfigError(
                f"{self.run.root}: no prepared data; run `rerank-ray {command}` first"
            )
        return PreparedData.from_dict(self.manifest["data"])

    def _outputs(self, stage: str) -> list[str]:
        paths = [getattr(self.run, name) for name in STAGE_TABLE[stage].writes]
        if stage == "rerank":  # one file per reranker in the rerank folder
            paths += [self.run.rerank_path(system) for system in self.config.rerank.systems]
        return paths

    def _discard_outputs(self, stage: str) -> None:
        for path in self._outputs(stage):
            discard(path)

    def _invalidate_after(self, stage: str) -> None:
        """Remove what later stages wrote: it was computed from what this stage replaces.

        Only the run's own output paths (:meth:`_outputs`), and only while this pipeline
        holds the claim that proved the directory a run directory.
        """
        if not self._lock.held:
            raise RuntimeError(f"{self.run.root}: the pipeline is closed; it removes nothing")
        for later in STAGES[STAGES.index(stage) + 1 :]:
            for path in self._outputs(later) + exported_paths(self.run.root, later):
                discard(path)
            self.manifest["stages"].pop(later, None)

    def stage_key(self, stage: str) -> str:
        """A hash of everything ``stage``'s output depends on: its own inputs and options
        (:meth:`RunInputs.depends_on`) and the key of the stage before it."""
        previous = self.stage_key(STAGES[STAGES.index(stage) - 1]) if stage != STAGES[0] else ""
        return digest([previous, stage, self.inputs.depends_on(stage)])[:16]

    def is_complete(self, stage: str) -> bool:
        """Whether ``stage`` finished with the current options and its outputs are in place."""
        recorded = self.manifest["stages"].get(stage, {})
        outputs = [p for p in self._outputs(stage) if p != self.run.plot_path]
        return recorded.get("key") == self.stage_key(stage) and all(exists(p) for p in outputs)

    def upstream(self, stage: str) -> tuple[str, ...]:
        """The stages whose outputs ``stage`` reads (not ``rerank``'s without a reranker;
        the prepared data, not embeddings, for ``retrieve`` from candidates or BM25)."""
        if stage == "retrieve" and not self.config.embeds:
            return ("prepare",)
        reads = STAGE_TABLE[stage].reads
        return reads if self.config.reranks else tuple(s for s in reads if s != "rerank")

    def require_upstream(self, stage: str) -> None:
        """Refuse (one line) to run ``stage`` on outputs that are missing or were computed
        from other inputs or options than the current config's: nothing stale is read, and
        no result is labelled with a model it was not computed with."""
        for before in self.upstream(stage):
            if before == "rerank" and exists(join(self.run.root, SINGLE_RERANKER_FILES[0])):
                raise ConfigError(
                    f"{self.run.root}: an earlier version's layout (one rerank.parquet); run"
                    " the 'rerank' stage to score each reranker into rerank/<system>.parquet"
                )
            if not self.is_complete(before):
                raise ConfigError(
                    f"{self.run.root}: the {before} stage's output is missing or was computed"
                    f" with other inputs or options; run `rerank-ray {command_running(before).name}`"
                    " first (`rerank-ray run` redoes what changed)"
                )

    def _timed(
        self,
        stage: str,
        work: Callable[[], dict],
        publish: Callable[[dict], None] | None = None,
    ) -> None:
        """Run ``work`` as ``stage``: check upstream, remove what it replaces, record its
        statistics (the commit point); ``publish(stats)`` writes what is derived from them
        before the record, so a stage cut short never leaves a record without them."""
        self.require_upstream(stage)
        log.info("stage %s: started", stage)
        self._invalidate_after(stage)
        for path in exported_paths(self.run.root, stage):
            discard(path)  # exported from the output this stage replaces
        if STAGE_TABLE[stage].whole:  # none of the last results may survive a cut
            self._discard_outputs(stage)
        # The manifest is the commit point: until this stage records itself again, it and
        # those after it are not done (an object store publishes a directory in several steps).
        self.manifest["stages"].pop(stage, None)
        self.run.write_manifest(self.manifest)
        key = self.stage_key(stage)  # of the inputs as they are when the stage starts
        started = time.perf_counter()
        try:
            stats = work()
            stats.setdefault("wall_seconds", round(time.perf_counter() - started, 3))
            stats["key"] = key
            if publish is not None:
                publish(stats)
        except BaseException:
            if STAGE_TABLE[stage].whole:  # its results stand together or not at all
                self._discard_outputs(stage)
            raise
        self._record(stage, stats)
        log.info("stage %s: done in %.1f s", stage, stats["wall_seconds"])
