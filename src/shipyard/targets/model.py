"""A model alias as a target: its deployments, retry budget and fallback chain; the terminal
step is failover over the deployments (`shipyard.resilience.failover`)."""

from __future__ import annotations

from shipyard.config.targets import ModelConfig
from shipyard.pipeline import Target
from shipyard.resilience.admission import Admission
from shipyard.resilience.failover import Deployment, failover
from shipyard.resilience.retry import RetryBudget

__all__ = ["ModelTarget"]


class ModelTarget(Target):
    """A model alias and everything needed to serve it."""

    kind = "model"

    def __init__(self, alias: str, config: ModelConfig, deployments: list[Deployment],
                 budget: RetryBudget) -> None:
        super().__init__(alias, failover)
        self.config = config
        self.deployments = deployments
        self.budget = budget
        self.fallback_targets: list[ModelTarget] = []
        self.admissions: list[Admission] = []
        # The version of this alias's configuration in the registry (`model/ALIAS`), set
        # by the gateway once registered; on the `x-shipyard-version` header and traces.
        self.version: str | None = None

    @property
    def alias(self) -> str:
        return self.name
