"""Connecting to the Ray cluster, once per process.

`ray.init` is process-wide and not safe to call twice with different settings; every engine
in this package goes through `connect()`, which connects on first use (under a lock, from any
thread) and tells what went wrong in Shipyard's terms when it cannot.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Any

from shipyard.config.engines import RayConfig
from shipyard.errors import ConfigError

__all__ = ["connect", "import_ray", "python_path_env", "shutdown"]

log = logging.getLogger("shipyard.engines.ray")
_lock = threading.Lock()
_connected: dict[str, Any] = {}
INSTALL = "pip install 'shipyard[ray]'"


def import_ray() -> Any:
    """The `ray` module, or a ConfigError with the install line."""
    try:
        import ray
    except ModuleNotFoundError as exc:
        raise ConfigError(f"engine 'ray' needs the '{exc.name}' package; install it with: "
                          f"{INSTALL}") from None
    return ray


def connect(config: RayConfig) -> Any:
    """Connect this process to the cluster of `config` (once) and return the `ray` module."""
    ray = import_ray()
    with _lock:
        if ray.is_initialized():
            return ray
        address = None if config.address == "local" else config.address
        options: dict[str, Any] = {"namespace": config.namespace, "log_to_driver": False,
                                   "logging_level": logging.WARNING,
                                   "configure_logging": False}
        if config.address == "local":
            options.update(num_cpus=config.local_num_cpus, include_dashboard=False,
                           object_store_memory=config.local_object_store_mb * 1024 * 1024)
        try:
            ray.init(address=address, **options)
        except ConnectionError as exc:
            raise ConfigError(
                f"Config key 'ray.address' is '{config.address}', and no Ray cluster answers "
                f"there ({str(exc).splitlines()[0][:200]}); start one with 'ray start --head' "
                "(or set RAY_ADDRESS), or use address: local for a private development "
                "cluster.") from None
        except Exception as exc:
            raise ConfigError(
                f"Connecting to the Ray cluster at ray.address '{config.address}' failed "
                f"({type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''})"
                "; check the address and that the cluster runs the same Ray and Python "
                "versions as this process.") from None
        _connected["address"] = config.address
        log.info("connected to the Ray cluster (%s)", config.address)
        return ray


def shutdown() -> None:
    """Disconnect this process (tests, the end of `shipyard data run --engine ray`)."""
    ray = import_ray()
    with _lock:
        if ray.is_initialized():
            ray.shutdown()
        _connected.clear()


def python_path_env(runtime_env: dict[str, Any], folders: Sequence[str]) -> dict[str, Any]:
    """`runtime_env` with `folders` (absolute) put first on the workers' PYTHONPATH, ahead of
    the PYTHONPATH the node was started with (Ray expands `${PYTHONPATH}` on the node)."""
    merged = {**runtime_env}
    if not folders:
        return merged
    env_vars = dict(merged.get("env_vars") or {})
    tail = env_vars.get("PYTHONPATH", "${PYTHONPATH}")
    env_vars["PYTHONPATH"] = ":".join([*folders, tail])
    merged["env_vars"] = env_vars
    return merged
