"""Life after launch: versions and aliases of every service (`registry`), model artifacts
(`artifacts`), the version router inside a service's terminal step (`serving`), rollout
gates (`gates`) and the controller that promotes and rolls back (`controller`), evaluation
(`datasets`, `evaluate`, `eval_run`, `report`) and the retraining loop (`retrain`).

See docs/lifecycle.md for the worked example.
"""

from __future__ import annotations
