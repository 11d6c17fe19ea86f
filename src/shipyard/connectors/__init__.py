"""Connectors: work that arrives without HTTP, through the same chain as a request.

```
Connectors        the connectors of one process: build, start (autostart), run, stop, status
Connector         base of every kind: run(stop), live Stats, counting
Dispatcher        a message -> a call through the target's chain (Invoker); retries, poison
RabbitMQConnector AMQP queue -> target -> reply_to / reply_queue; dead letter; transactions
NATSConnector     JetStream durable pull consumer -> target -> reply subject; dead letter
KafkaConnector    topic (consumer group) -> target -> reply topic; dead letter topic
SQLConnector      table or query, in key order and batches -> target -> upserted output table
FilesConnector    a folder (or S3 bucket) of CSV/JSONL/Parquet -> target or pipeline -> done/
RunLog            connector runs in the store (counts, heartbeat, checkpoint)
```
See docs/integration.md#connectors.
"""

from __future__ import annotations

from shipyard.connectors.base import Connector, Dispatcher, Outcome, Poison, Stats
from shipyard.connectors.manager import KINDS, Connectors, describe_target
from shipyard.connectors.runs import Run, RunLog

__all__ = [
    "KINDS",
    "Connector",
    "Connectors",
    "Dispatcher",
    "Outcome",
    "Poison",
    "Run",
    "RunLog",
    "Stats",
    "describe_target",
]
