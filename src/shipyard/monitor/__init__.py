"""Monitoring over the store: alert rules, SLOs and burn rates, notification channels, drift."""
