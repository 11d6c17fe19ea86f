"""Monitoring: data drift (`drift`, `profiles`) and alerts."""
