"""`shipyard data run --engine ray`: the pipeline's batch step (clean → validate → key →
PII) on a pool of Ray actors spread over the cluster, everything else exactly as the local
engine does it.

The driver reads the source with the same readers (encoding detection, line numbers, row
ids in read order), puts each raw batch in Ray's object store, and hands it to the next
actor; each actor builds its `BatchProcessor` once. Results are taken back in input order,
with at most two batches per actor in flight, so memory stays flat and the run's accounting
(duplicates, uniqueness, near-duplicate clusters, quarantine, the Parquet output) is byte
for byte the local engine's. What scales out is the CPU-heavy part: parsing values,
cleaning text, MinHash signatures and PII detection.

>>> runner = RayBatchRunner(RayConfig(address="auto"), workers=4)  # doctest: +SKIP
>>> run_pipeline(load_pipeline("pipeline.yaml"), runner=runner, engine="ray")  # doctest: +SKIP
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from typing import Any

from shipyard.config.engines import RayConfig
from shipyard.data.config import PipelineConfig
from shipyard.data.pipeline import BatchJob
from shipyard.data.process import BatchProcessor, ProcessedBatch
from shipyard.data.sources import RawBatch
from shipyard.engines.ray.cluster import connect
from shipyard.errors import ShipyardError

__all__ = ["BatchActor", "RayBatchRunner"]


class BatchActor:
    """One Ray actor of the pool: a `BatchProcessor` built once from the pipeline config."""

    def __init__(self, config: PipelineConfig) -> None:
        self.processor = BatchProcessor(config)

    def process(self, raw: RawBatch, columns: list[str], first_id: int) -> ProcessedBatch:
        return self.processor.process(raw, columns, first_id)

    def ready(self) -> bool:
        return True


class RayBatchRunner:
    """A `shipyard.data.pipeline.BatchRunner` on Ray actors.

    `workers` actors (default: one per CPU free on the cluster, at most 64), each reserving
    `num_cpus`.
    """

    def __init__(self, config: RayConfig, *, workers: int | None = None,
                 num_cpus: float = 1.0, start_timeout_s: float = 120.0) -> None:
        self.config = config
        self.workers = workers
        self.num_cpus = num_cpus
        self.start_timeout_s = start_timeout_s
        self.used_workers = 0

    def _size(self, ray: Any) -> int:
        if self.workers is not None:
            return self.workers
        # The CPUs free now (Serve replicas may hold some of the cluster's).
        cpus = float(ray.available_resources().get("CPU", 1.0))
        return max(1, min(64, int(cpus // max(self.num_cpus, 0.01))))

    def __call__(self, config: PipelineConfig,
                 jobs: Iterator[BatchJob]) -> Iterator[ProcessedBatch]:
        ray = connect(self.config)
        size = self._size(ray)
        self.used_workers = size
        actor_class = ray.remote(num_cpus=self.num_cpus, max_restarts=0)(BatchActor)
        actors = [actor_class.remote(config) for _ in range(size)]
        pending: deque[Any] = deque()
        try:
            self._started(ray, actors)
            for n, (raw, columns, first_id) in enumerate(jobs):
                pending.append(actors[n % size].process.remote(raw, columns, first_id))
                while len(pending) >= size * 2:
                    yield _processed(ray, pending.popleft())
            while pending:
                yield _processed(ray, pending.popleft())
        finally:
            for actor in actors:
                ray.kill(actor)


    def _started(self, ray: Any, actors: list[Any]) -> None:
        """Every actor is up, or a clear error: an actor that cannot be placed (every CPU
        reserved, e.g. by Serve replicas) would otherwise wait forever."""
        probes = [actor.ready.remote() for actor in actors]
        ready, _ = ray.wait(probes, num_returns=len(probes), timeout=self.start_timeout_s)
        if len(ready) == len(probes):
            return
        for probe in ready:
            _get(ray, probe)  # an actor that failed to start says why
        free = ray.available_resources().get("CPU", 0.0)
        total = ray.cluster_resources().get("CPU", 0.0)
        raise ShipyardError(
            f"Only {len(ready)} of {len(actors)} Ray actors of the data pipeline started within "
            f"{self.start_timeout_s:g} s; the cluster has {free:g} of {total:g} CPUs free and "
            f"each actor needs {self.num_cpus:g}. Pass fewer --workers, or free CPUs (Serve "
            "replicas reserve theirs).")


def _get(ray: Any, ref: Any) -> Any:
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as exc:
        cause = getattr(exc, "cause", None)
        if isinstance(cause, ShipyardError):
            raise cause from None
        raise ShipyardError(f"A batch failed on Ray ({type(cause or exc).__name__}: "
                          f"{str(cause or exc).splitlines()[0][:300]}).") from None
    except ray.exceptions.RayActorError as exc:
        raise ShipyardError(f"A Ray actor of the data pipeline died ({type(exc).__name__}); "
                          "check the cluster's memory (ray status) and run again.") from None


def _processed(ray: Any, ref: Any) -> ProcessedBatch:
    done: ProcessedBatch = _get(ray, ref)
    return done
