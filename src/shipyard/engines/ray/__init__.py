"""Ray engines (the `ray` extra: pip install 'shipyard[ray]'):

- `serving`: services with `engine: ray` as Ray Serve deployments, one application per
  version, called through deployment handles behind the gateway's chain;
- `replica`: what runs inside each Ray Serve replica (loads one version, calls it);
- `data`: `shipyard data run --engine ray`, the pipeline's batches processed by Ray actors;
- `cluster`: connecting to the cluster once per process.

Nothing here imports Ray at module level: the gateway imports this package whether or not a
service uses Ray, and a missing extra fails with the exact install line when one does.
"""
