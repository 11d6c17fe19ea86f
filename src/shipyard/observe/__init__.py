"""Observability: metrics, token estimation, trace recording."""
