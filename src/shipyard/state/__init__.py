"""Shared state backends: in-process memory by default, Redis when replicas must agree."""

from __future__ import annotations

from shipyard.state.base import KeyValue
from shipyard.state.memory import MemoryKeyValue

__all__ = ["KeyValue", "MemoryKeyValue"]
