"""Building blocks every section of the settings table shares: the frozen `Section` base,
name and `module:function` patterns, capture modes and roles.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict

__all__ = [
    "FUNCTION_PATTERN",
    "NAME_PATTERN",
    "ROLES",
    "CaptureMode",
    "Role",
    "Section",
]


CaptureMode = Literal["none", "metadata", "full"]


NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")


FUNCTION_PATTERN = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


ROLES = ("admin", "operator", "developer", "client", "viewer")  # highest privilege first


Role = Literal["admin", "operator", "developer", "client", "viewer"]


class Section(BaseModel):
    """A section of shipyard.yaml: unknown keys are errors, values are frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)
