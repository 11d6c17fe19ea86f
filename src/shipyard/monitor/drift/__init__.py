"""Data drift (the `monitor` extra: numpy and scipy): Evidently-equal tests per column
(`stattests`, `detect`), stored profiles as sketches (`profiles`), features of gateway traces
(`features`), embedding drift (`embeddings`), stored results (`store`), scheduled checks
(`checks`) and the HTML report (`report`). See docs/drift.md.

Nothing is imported here, so `import shipyard.monitor.drift.store` does not load numpy.
"""
