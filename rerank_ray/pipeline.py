"""The stages of one run directory, in order, and its manifest.

A run directory is the contract between stages: each reads only what earlier stages wrote
there (the layout: README's "The run directory"; the table of reads and writes:
:data:`rerank_ray.stages.STAGE_TABLE`) and publishes its own output atomically, so any stage
can be re-run alone. Each stage's work lives in its module (:mod:`rerank_ray.datasets`,
:mod:`rerank_ray.embed`, :mod:`rerank_ray.search` or :mod:`rerank_ray.candidates`,
:mod:`rerank_ray.rerank`, :mod:`rerank_ray.evaluation`); this one decides what runs. Its
base, :class:`rerank_ray.ledger.RunLedger`, holds the run directory (one writer, never a
folder that is not a run directory), records each stage in the manifest and keys every
output by what it was computed from.

Example::

    from rerank_ray.config import RunConfig
    from rerank_ray.datasets import DataConfig
    config = RunConfig(out="runs/seed", data=DataConfig(dataset="dev.jsonl"),
                       embedder="minilm")
    run_pipeline(config)
"""

from __future__ import annotations

import logging

from rerank_ray.config import RunConfig
from rerank_ray.datasets import prepare_data
from rerank_ray.export import exported_paths
from rerank_ray.io import discard, join
from rerank_ray.keys import digest
from rerank_ray.ledger import RunLedger
from rerank_ray.local_ray import connect_ray
from rerank_ray.rundir import RunDirectory
from rerank_ray.stages import STAGES
from rerank_ray.systems import SINGLE_RERANKER_FILES

log = logging.getLogger("rerank_ray")


class Pipeline(RunLedger):
    """Runs stages of one run directory in order and keeps its manifest up to date.

    Constructing one claims the run directory (:class:`rerank_ray.ledger.RunLedger`) before
    anything else; the claim lasts until :meth:`close`. Use the pipeline as a context
    manager::

        with Pipeline(config) as pipeline:
            pipeline.run_all()
    """

    def _plan_pool(self):
        """The actor pool of a model stage under the run's device policy (Ray connected)."""
        from rerank_ray.pool import plan_resources

        compute = self.config.compute
        return plan_resources(
            compute.device, compute.num_actors, compute.max_actors, compute.num_gpus_per_actor
        )

    # ------------------------------------------------------------------ stages

    def prepare(self) -> None:
        """Normalize the sources into the run's Parquet tables (no model).

        A separate corpus table is checked on Ray Data (ids, positives): see
        :func:`rerank_ray.corpus_check.check_corpus`.
        """
        self.config.data.validate()  # sources checked before Ray starts
        if self.config.data.corpus is not None or self.config.data.beir is not None:
            connect_ray(self.config.compute.address)

        def work() -> dict:
            prepared = prepare_data(self.config.data, self.run.data_dir)
            self.manifest["data"] = prepared.to_dict()
            rows = prepared.num_corpus + prepared.num_queries
            return {"rows": rows}

        self._timed("prepare", work)

    def embed(self) -> None:
        """Embed the corpus and the queries, unless the cache or the user already has them.

        Per role, in order of preference: vectors the user supplied (checked), a cache entry
        with the same key (model fingerprint, vector-changing options, content hash), or an
        actor pool that computes them (then stored in the cache). When no role needs the
        model, it is never loaded.
        """
        from rerank_ray.cache import EmbeddingCache
        from rerank_ray.embed import Role, embed_or_reuse
        from rerank_ray.models import default_cache_dir

        if not self.config.embeds:
            self._drop_embeddings()
            source = "the candidates are" if self.config.candidates else "BM25 is"
            log.info("stage embed: skipped (%s the retrieval)", source)
            return
        prepared = self._prepared()
        embedder = self.inputs.embedder()
        self.inputs.check_supplied()
        options = self.inputs.embedding_options()
        self.manifest["models"]["embedder"] = {**embedder.to_dict(), "options": options.__dict__}
        connect_ray(self.config.compute.address)
        resources = self._plan_pool()
        cache_dir = self.config.cache_dir or default_cache_dir()
        cache = EmbeddingCache.usable(cache_dir) if self.config.use_cache else None
        roles = [
            Role("corpus", prepared.corpus_path, prepared.num_corpus, prepared.corpus_hash,
                 self.run.corpus_embeddings_dir, self.config.corpus_embeddings),
            Role("queries", prepared.queries_path, prepared.num_queries, prepared.queries_hash,
                 self.run.query_embeddings_dir, self.config.query_embeddings),
        ]  # fmt: skip

        def work() -> dict:
            return embed_or_reuse(
                roles,
                model=self.config.embedder,
                fingerprint=embedder.fingerprint,
                options=options,
                cache=cache,
                resources=resources,
                rows_per_call=self.config.compute.rows_per_call,
            )

        self._timed("embed", work)

    def retrieve(self) -> None:
        """Exact top-k of every query over the corpus embeddings, or the candidates ranked."""
        from rerank_ray.search import exact_search

        if self.config.candidates:
            self._retrieve_candidates()
            return
        if self.config.retriever != "dense":
            self._retrieve_bm25()
            return
        self.run.require(self.run.corpus_embeddings_dir, "embed")
        self.run.require(self.run.query_embeddings_dir, "embed")
        connect_ray(self.config.compute.address)

        def work() -> dict:
            stats = exact_search(
                self.run.corpus_embeddings_dir,
                self.run.query_embeddings_dir,
                self.run.retrieval_path,
                k=self.config.top_k,
                device=self.config.compute.device,
            )
            return {**stats.to_dict(), "top_k": self.config.top_k}

        self._timed("retrieve", work)

    def _retrieve_candidates(self) -> None:
        """The candidates, checked against the prepared tables before anything is removed,
        ranked as trec_eval ranks them (:mod:`rerank_ray.candidates`)."""
        from rerank_ray.candidates import check_known_ids, write_retrieval

        self.require_upstream("retrieve")
        prepared, candidates = self._prepared(), self.inputs.check_candidates()
        self.inputs.forget_candidates()  # held by this stage only
        check_known_ids(candidates, prepared, self.config.data)
        self._drop_embeddings()
        sha256 = self.inputs.content_hash(candidates.path)
        out, top_k = self.run.retrieval_path, self.config.top_k
        self._timed("retrieve", lambda: write_retrieval(candidates, prepared, out, top_k, sha256))

    def _retrieve_bm25(self) -> None:
        """BM25's ranking (in one Ray task, :mod:`rerank_ray.bm25`), fused by reciprocal rank
        with the dense one for ``hybrid``."""
        from rerank_ray.bm25 import bm25_retrieval
        from rerank_ray.models import default_cache_dir

        config = self.config
        hybrid = config.retriever == "hybrid"
        if hybrid:
            self.run.require(self.run.corpus_embeddings_dir, "embed")
            self.run.require(self.run.query_embeddings_dir, "embed")
        prepared = self._prepared()
        connect_ray(config.compute.address)
        out, top_k = self.run.retrieval_path, config.top_k
        cache_root = (config.cache_dir or default_cache_dir()) if config.use_cache else None

        def work() -> dict:
            embeddings = (self.run.corpus_embeddings_dir, self.run.query_embeddings_dir)
            found = bm25_retrieval(
                prepared.corpus_path,
                prepared.queries_path,
                out,
                top_k,
                config.bm25,
                dense_from=embeddings if hybrid else None,
                device=config.compute.device,
                cache_root=cache_root,
                corpus_hash=prepared.corpus_hash,
            )
            return {"retriever": config.retriever, "top_k": top_k, **found}

        if not hybrid:
            self._drop_embeddings()
        self._timed("retrieve", work)

    def _drop_embeddings(self) -> None:
        """A run ranked from candidates or by BM25 alone holds no embeddings: those there
        were computed for another configuration."""
        for path in self._outputs("embed"):
            discard(path)
        self.manifest["stages"].pop("embed", None)
        self.manifest["models"]["embedder"] = None
        self.run.write_manifest(self.manifest)

    def retrieval_depth(self) -> int:
        """The most passages retrieved for a query: ``top_k``, or fewer when candidates
        ranked fewer."""
        recorded = self.manifest["stages"].get("retrieve", {}).get("depth")
        return min(self.config.top_k, recorded or self.config.top_k)

    def system_key(self, system: str) -> str:
        """A hash of what one reranker's scores are computed from: the retrieval's key, the
        reranker's weights and the options that change its scores (:class:`RunInputs`)."""
        payload = [self.stage_key("retrieve"), "rerank", self.inputs.system_depends_on(system)]
        return digest(payload)[:16]

    def rerank(self) -> None:
        """Rescore the top retrieved passages with each reranker (skipped for ``none``).

        Each reranker is a system scored into its own ``rerank/<system>.parquet``, whose
        metadata records the key it was computed with (:meth:`system_key`) and its row count.
        A file whose key is current and whose rows are the candidate pairs is kept, so adding
        a reranker to a run scores only the new one; files of rerankers the run no longer has
        are removed.
        """
        from rerank_ray.rerank import candidate_count, rerank_candidates
        from rerank_ray.systems import files_of_other_systems, reuse_or_score

        self._discard_single_reranker_files()
        if not self.config.reranks:
            self._invalidate_after("retrieve")  # a previous reranker's output no longer applies
            self.manifest["models"]["rerankers"] = {}
            self.run.write_manifest(self.manifest)
            log.info("stage rerank: skipped (reranker none)")
            return
        self.run.require(self.run.retrieval_path, "retrieve")
        prepared = self._prepared()
        systems = self.config.rerank.systems
        self.manifest["models"]["rerankers"] = self.inputs.reranker_records()
        pairs = candidate_count(self.run.retrieval_path, self.config.rerank.top_k)

        pool: list = []  # planned once, when a reranker is scored

        def score(system: str, model: str, path: str, key: str) -> dict:
            for export in exported_paths(self.run.root, "rerank", system):
                discard(export)
            if not pool:
                connect_ray(self.config.compute.address)
                pool.append(self._plan_pool())
            log.info("rerank %s: scoring %d pairs with %s", system, pairs, model)
            return rerank_candidates(
                self.run.retrieval_path,
                prepared.corpus_path,
                prepared.queries_path,
                path,
                self.config.rerank.only(model),
                resources=pool[0],
                rows_per_call=self.config.compute.rows_per_call,
                key=key,
            ).to_dict()

        def work() -> dict:
            for path in files_of_other_systems(self.run.rerank_dir, systems):
                discard(path)
                log.warning("removed %s: its reranker is not among --reranker now", path)
            paths = {system: self.run.rerank_path(system) for system in systems}
            keys = {system: self.system_key(system) for system in systems}
            return reuse_or_score(systems, paths, keys, pairs, score)

        self._timed("rerank", work)

    def _discard_single_reranker_files(self) -> None:
        """Remove the one-reranker layout earlier versions wrote (its scores are keyed by
        nothing this version can check)."""
        for name in SINGLE_RERANKER_FILES:
            discard(join(self.run.root, name))

    def evaluate(self) -> dict:
        """Metrics of each system's rankings; writes metrics.json, per_query.parquet,
        significance.json, report.md and report.png."""
        from rerank_ray.cross_encoder import SMOKE_WARNING, is_smoke_model
        from rerank_ray.evaluation import evaluate_run, rerank_cost
        from rerank_ray.metrics import reportable_metrics
        from rerank_ray.report import write_report

        self.run.require(self.run.retrieval_path, "retrieve")
        prepared = self._prepared()
        # Refused before the stage starts, so the run's last evaluation stays as it was.
        reportable_metrics(self.config.metric_names, self.retrieval_depth())
        systems = self.config.rerank.systems
        if self.config.rerank.depths and not systems:  # kept in the config for a later reranker
            log.warning("--rerank-depths are not swept: --reranker is none")
        result: dict = {}
        significance: dict = {}

        def work() -> dict:
            metrics, stats = evaluate_run(
                self.run.retrieval_path,
                {system: self.run.rerank_path(system) for system in systems},
                prepared.qrels_path,
                self.retrieval_depth(),
                self.run,
                notes={s: SMOKE_WARNING for s, model in systems.items() if is_smoke_model(model)},
                depths=self.config.rerank.depths,
                rerank_costs={system: rerank_cost(self.manifest, system) for system in systems},
                metrics=self.config.metric_names,
                queries_path=prepared.queries_path,
                baseline=self.config.baseline,
            )
            result.update(metrics)
            significance.update(stats.pop("significance"))
            return {**stats, "depth": self.retrieval_depth()}

        def publish(stats: dict) -> None:
            recorded = {**self.manifest, "stages": {**self.manifest["stages"], "evaluate": stats}}
            write_report(self.run.report_path, result, recorded, significance)

        self._timed("evaluate", work, publish)
        return result

    def run_all(self, resume: bool = True) -> dict:
        """prepare → embed → retrieve → rerank → evaluate; returns the metrics.

        With ``resume``, a stage that already finished with the same options (its key in the
        manifest, its output in place) is skipped: re-running an interrupted command redoes
        only the unfinished stage and those after it.
        """
        self.inputs.check()
        compute = self.config.compute
        if compute.device == "cuda" or compute.num_gpus_per_actor:
            from rerank_ray.pool import refuse_missing_gpus

            connect_ray(compute.address)
            refuse_missing_gpus(compute.device, compute.num_gpus_per_actor)
        for stage in STAGES[:-1]:
            if resume and self.is_complete(stage):
                log.info("stage %s: up to date, skipped", stage)
                continue
            getattr(self, stage)()
        return self.evaluate()


def run_pipeline(config: RunConfig, resume: bool = True) -> dict:
    """Run every stage of ``config`` and return ``metrics.json``'s content.

    With ``resume``, stages already completed in ``config.out`` with the same options are
    skipped.
    """
    with Pipeline(config) as pipeline:
        return pipeline.run_all(resume=resume)


def load_config(run_dir: str) -> RunConfig | None:
    """The config recorded in a run directory's manifest, if any."""
    manifest = RunDirectory(run_dir).read_manifest()
    if "config" not in manifest:
        return None
    return RunConfig.from_dict(manifest["config"])
