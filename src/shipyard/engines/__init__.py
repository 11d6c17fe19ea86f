"""Where work runs besides the gateway's own process: `shipyard.engines.ray` places services
on Ray Serve and runs `shipyard data` pipelines on a Ray cluster (the `ray` extra)."""
