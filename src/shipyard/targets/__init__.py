"""Targets: everything a request can reach — model aliases and hosted services — each with the
chain of stages from `shipyard.pipeline` around its terminal step, built from config."""

from __future__ import annotations
