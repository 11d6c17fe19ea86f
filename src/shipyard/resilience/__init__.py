"""Resilience: timeouts, retries with a budget, circuit breakers, load balancing, fallbacks,
admission control and the response cache."""
