"""What runs inside a Ray Serve replica: one version of one service, loaded once, called
for each request the gateway sends through its deployment handle.

The gateway has already authenticated, limited, guarded and validated the request; the
replica only runs the function (sync functions in its thread pool, under the service's
timeout) with the caller's `shipyard.Invocation` set, so `shipyard.client()` calls from the
function reach the gateway as child traces. An error comes back as a `Failure` value, not
an exception, so the gateway answers with the same status and message as in process.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydantic

from shipyard.errors import ShipyardError
from shipyard.lifecycle.artifacts import StoredArtifact
from shipyard.lifecycle.serving import LoadedVersion, load_function, load_model_version
from shipyard.pipeline import Invocation, invocation
from shipyard.providers.python import call_function

__all__ = ["Failure", "Replica", "VersionSpec"]


@dataclass(frozen=True)
class VersionSpec:
    """Everything a replica needs to load a version, wherever it runs: the function's
    reference, or the model file's bytes (hash-checked again when loaded)."""

    service: str
    label: str
    reference: str | None = None
    artifact: bytes | None = None
    artifact_sha256: str | None = None
    artifact_format: str | None = None
    call: str = "predict_proba"
    timeout_s: float = 60.0

    @classmethod
    def of(cls, service: str, version: LoadedVersion, *, timeout_s: float) -> VersionSpec:
        if version.artifact is not None:
            artifact = version.artifact
            call = version.caller.call if version.caller is not None else "predict_proba"
            return cls(service, version.label, artifact=artifact.path.read_bytes(),
                       artifact_sha256=artifact.sha256, artifact_format=artifact.format,
                       call=call, timeout_s=timeout_s)
        if version.reference is None:
            raise ValueError(f"version {version.label} of '{service}' names no function")
        return cls(service, version.label, reference=version.reference, timeout_s=timeout_s)

    def identity(self) -> str:
        """What makes two specs the same version (the artifact by its hash)."""
        what = self.reference or f"{self.artifact_format}:{self.artifact_sha256}:{self.call}"
        return f"{self.service}|{self.label}|{what}|{self.timeout_s}"


@dataclass(frozen=True)
class Failure:
    """A call that failed on the replica: the ShipyardError's class name, status, message
    and code, rebuilt by the gateway into the same error."""

    error: str
    status: int
    message: str
    code: str | None = None


def load_spec(spec: VersionSpec) -> LoadedVersion:
    if spec.artifact is None:
        return load_function(spec.reference or "", key=f"services.{spec.service}.function",
                             label=spec.label)
    suffix = {"onnx": ".onnx", "joblib": ".joblib"}.get(spec.artifact_format or "", ".pkl")
    folder = Path(tempfile.mkdtemp(prefix="shipyard-replica-"))
    path = folder / f"{spec.artifact_sha256}{suffix}"
    path.write_bytes(spec.artifact)
    return load_model_version(StoredArtifact(path, spec.artifact_sha256 or "",
                                             spec.artifact_format or "pickle"),
                              spec.call, name=spec.service, label=spec.label)


class Replica:
    """The Ray Serve deployment class (wrapped by `serve.deployment` in the gateway)."""

    def __init__(self, spec: VersionSpec) -> None:
        self.spec = spec
        self.version = load_spec(spec)
        self.calls = 0

    async def __call__(self, argument: Any, called: Invocation | None) -> Any:
        self.calls += 1
        token = invocation.set(called)
        try:
            result = await call_function(self.version.function, argument,
                                         timeout_s=self.spec.timeout_s,
                                         what=f"Service '{self.spec.service}'")
        except ShipyardError as exc:
            return Failure(type(exc).__name__, exc.status, exc.message, exc.code)
        finally:
            invocation.reset(token)
        if isinstance(result, pydantic.BaseModel):
            # The gateway may not have the output's class under the same name: send JSON.
            result = result.model_dump(mode="json")
        return result

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """The spec's hash, sent as Ray Serve's user_config (see `serving`)."""
        self.spec_hash = user_config.get("spec")

    def pid(self) -> int:
        """The replica's process id (what `shipyard status` lists, what a chaos test kills)."""
        return os.getpid()

    def check_health(self) -> None:
        """Ray Serve calls this every `health_check_period_s`; loading succeeded, so the
        replica is healthy while its process answers."""
