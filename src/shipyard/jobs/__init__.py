"""Asynchronous work that clients start: durable jobs (any model alias or service invoked
asynchronously), the OpenAI-compatible Batch API and the Files API it reads and writes.

Everything here runs on the durable work queue (`shipyard.work`) and sends every request
through its target's full chain (the gateway passes a `Run` that does), exactly like a
synchronous request. See docs/integration.md.

```
Jobs         create, read, list, cancel, retry jobs; the worker handler (one lane per target)
Batches      the Batch API: validate, run line by line with checkpoints, finalize
FileStore    the Files API: bytes on disk, a row per file in the store
```
"""

from __future__ import annotations

from shipyard.jobs.batches import Batch, Batches
from shipyard.jobs.files import FileObject, FileStore, files_dir
from shipyard.jobs.jobs import Job, JobRequest, Jobs, Outcome, Run

__all__ = ["Batch", "Batches", "FileObject", "FileStore", "Job", "JobRequest", "Jobs",
           "Outcome", "Run", "files_dir"]
