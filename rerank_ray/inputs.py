"""What a run reads, resolved, hashed and checked once: its models (folder and weights
fingerprint), its sources' content (SHA-256, kept in the manifest's ``sources`` and re-read only
when a file's size or mtime changed), supplied vectors and candidates; and from them, what each
stage's output depends on (:meth:`RunInputs.depends_on`), which the stage keys hash.

Checks that need neither Ray nor a model's weights loaded run before any stage
(:meth:`RunInputs.check`), so a typo fails in one line at once.
"""

from __future__ import annotations

import platform
from dataclasses import asdict
from importlib import metadata

from rerank_ray.beir import beir_files
from rerank_ray.config import RunConfig
from rerank_ray.errors import ConfigError
from rerank_ray.formats import is_local_source
from rerank_ray.io import content_fingerprint
from rerank_ray.keys import score_options, vector_options

#: The packages whose versions a run's results may depend on (recorded in the manifest).
VERSIONED_PACKAGES = (
    "rerank-ray", "ray", "torch", "transformers", "FlagEmbedding", "datasets", "pyarrow",
    "numpy", "scipy", "bm25s", "PyStemmer",
)  # fmt: skip


def library_versions() -> dict[str, str]:
    """Python's and :data:`VERSIONED_PACKAGES`' versions ("not installed" for a missing one)."""
    versions = {"python": platform.python_version()}
    for package in VERSIONED_PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


class RunInputs:
    """The inputs of one run's ``config``; ``manifest`` is the run's (its ``sources`` entry
    caches content hashes)."""

    def __init__(self, config: RunConfig, manifest: dict):
        self.config = config
        self.manifest = manifest
        self._models: dict = {}
        self._supplied_checked = False
        self._candidates = None  # read and checked once: by :meth:`check` or the stage

    def forget_candidates(self) -> None:
        """Let go of the checked candidates (the retrieve stage holds them from here)."""
        self._candidates = None

    def depends_on(self, stage: str):
        """What ``stage``'s output is computed from, besides earlier stages' outputs: content,
        not paths (source files by content hash, models by fingerprint), and only the options
        that change a vector or a score (:mod:`rerank_ray.keys`)."""
        config = self.config
        if stage == "prepare":
            return {"data": asdict(config.data), "sources": self.source_hashes()}
        if stage == "embed":
            if not config.embeds:
                return "no embeddings: the candidates or BM25 are the retrieval"
            options = self.embedding_options()
            supplied = {
                role: self.content_hash(path) if path else None
                for role, path in (
                    ("corpus", config.corpus_embeddings),
                    ("queries", config.query_embeddings),
                )
            }
            return {
                "embedder": self.embedder().fingerprint,
                "vectors": {role: vector_options(options, role) for role in ("corpus", "queries")},
                "supplied": supplied,
            }
        if stage == "retrieve":
            if config.candidates:
                return {"top_k": config.top_k, "candidates": self.content_hash(config.candidates)}
            if config.retriever != "dense":
                from rerank_ray.bm25 import index_version

                bm25 = {"k1": config.bm25.k1, "b": config.bm25.b, "index": index_version()}
                if config.retriever == "hybrid":
                    bm25["rrf_k"] = config.bm25.rrf_k
                return {"top_k": config.top_k, "retriever": config.retriever, "bm25": bm25}
            return {"top_k": config.top_k}
        if stage == "rerank":
            if not config.reranks:
                return None
            return {system: self.system_depends_on(system) for system in config.rerank.systems}
        if stage == "evaluate":
            return {
                "rerank_depths": config.rerank.depths,
                "metrics": config.metrics,
                "baseline": config.baseline,
            }
        return None

    def system_depends_on(self, system: str) -> dict:
        """What one reranker's scores are computed from, besides the retrieval: its weights'
        fingerprint and the options that change a score or which pairs are scored."""
        model = self.config.rerank.systems[system]
        return {
            "reranker": self.reranker(system).fingerprint,
            **score_options(self.config.rerank, model),
        }

    def embedder(self):
        """The embedder resolved to a local directory and fingerprint (once)."""
        from rerank_ray.models import resolve_model

        if "embedder" not in self._models:
            self._models["embedder"] = resolve_model(self.config.embedder)
        return self._models["embedder"]

    def reranker(self, system: str):
        """A reranker of the run, by system name, resolved to its folder and fingerprint
        (once)."""
        from rerank_ray.bi_encoder import resolve_reranker

        key = ("reranker", system)
        if key not in self._models:
            self._models[key] = resolve_reranker(self.config.rerank.systems[system])
        return self._models[key]

    def reranker_records(self) -> dict:
        """``{system: its model (name, path, fingerprint) and the rerank options}``, as the
        manifest records the run's rerankers."""
        options = self.config.rerank.to_dict()
        return {
            s: {**self.reranker(s).to_dict(), "options": options}
            for s in self.config.rerank.systems
        }

    def embedding_options(self):
        """The embedding options with the model's defaults filled in."""
        return self.config.embedding.resolved(self.embedder().path)

    def content_hash(self, path: str) -> str:
        """The SHA-256 of a source's content; re-read only when its files' sizes or mtimes
        changed since the manifest recorded them."""
        known = self.manifest.setdefault("sources", {})
        try:
            known[path] = content_fingerprint(path, known.get(path))
        except FileNotFoundError:
            raise ConfigError(f"{path}: no such file") from None
        return known[path]["sha256"]

    def source_hashes(self) -> dict:
        data = self.config.data
        sources = (data.dataset, data.corpus, data.queries, data.qrels)
        if data.beir is not None:
            sources = beir_files(data.beir, data.beir_split)
        return {
            path: self.content_hash(path) if is_local_source(path) else "hub"
            for path in sources
            if path is not None
        }

    def check(self) -> None:
        """Refuse, in one line and before Ray starts or any stage runs, what can be checked
        without them: the sources, the models (resolved: names, folders with weights, config
        and tokenizer), supplied vectors (:meth:`check_supplied`), candidates
        (:meth:`check_candidates`; the embedder is then not needed) and metrics of which none
        is within ``top_k``."""
        from rerank_ray.metrics import reportable_metrics

        self.config.data.validate()
        reportable_metrics(self.config.metric_names, self.config.top_k)
        if self.config.candidates:
            self.check_candidates()
        if self.config.embeds:
            self.embedder()
        for system in self.config.rerank.systems:
            self.reranker(system)
        self.check_supplied()

    def check_candidates(self):
        """The candidates file, read and checked for what needs no prepared data (once per
        pipeline; :class:`~rerank_ray.candidates.Candidates`)."""
        from rerank_ray.candidates import read_candidates

        if self._candidates is None:
            self._candidates = read_candidates(self.config.candidates)
        return self._candidates

    def check_supplied(self) -> None:
        """Supplied vectors are Parquet with an id column and ``embedding``, and share one
        dimension with each other or, where one role is computed, with the embedder's
        (checked once per pipeline: ``run`` checks before any stage, ``embed`` alone too)."""
        if self._supplied_checked:
            return
        from rerank_ray.models import model_dimension
        from rerank_ray.supplied import check_dimensions

        config = self.config
        corpus, queries = config.corpus_embeddings, config.query_embeddings
        embedder = None
        if (corpus is None) != (queries is None):  # one role is computed by the embedder
            embedder = (config.embedder, model_dimension(self.embedder().path))
        check_dimensions(corpus, queries, embedder)
        self._supplied_checked = True
