"""The `connectors:` section: work that arrives without HTTP — messages on RabbitMQ, NATS
JetStream or Kafka, rows of a SQL table, files dropped in a folder — run through a target's
chain (limits, guards, PII, traces, cost) like any request.

Each connector is a block with a `kind` and a `target` (a hosted service, or a model alias):

>>> ConnectorConfig.validate_python({"kind": "rabbitmq", "queue": "requests",
...     "target": {"service": "classify"}}).dead_letter_queue
'requests.dead'
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import Field, SecretStr, TypeAdapter, field_validator, model_validator

from shipyard.config.base import Section

__all__ = [
    "CONNECTOR_KINDS",
    "AnyConnector",
    "ConnectorConfig",
    "ConnectorTarget",
    "FilesConnectorConfig",
    "KafkaConnectorConfig",
    "NATSConnectorConfig",
    "RabbitMQConnectorConfig",
    "S3Source",
    "SQLConnectorConfig",
    "Schedule",
]

# Every connector kind, and the extra that brings its client library.
CONNECTOR_KINDS: dict[str, str | None] = {
    "rabbitmq": "queues", "nats": "queues", "kafka": "kafka", "sql": None, "files": None,
}

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}(\.[A-Za-z_][A-Za-z0-9_]{0,62})?$")
_CRON_FIELD = re.compile(r"^(\*|\d+(-\d+)?)(/\d+)?(,(\*|\d+(-\d+)?)(/\d+)?)*$")


class ConnectorTarget(Section):
    """Where each message, row or file line goes: a hosted service or a model alias."""

    service: str | None = Field(None, description="A hosted service: each message (or row) "
                                "is its input.")
    model: str | None = Field(None, description="A model alias: each message is an OpenAI "
                              "request body for `endpoint` (its `model` defaults to this "
                              "alias), or with `prompt`, the fields the prompt is filled from.")
    endpoint: Literal["chat/completions", "completions", "embeddings"] = Field(
        "chat/completions", description="The model endpoint messages are sent to.")
    prompt: str | None = Field(
        None, description="With `model`: the user message, filled from the message's or row's "
        "fields with Python `str.format` names (`Summarise: {text}`); the answer's text is the "
        "result's `output`.")

    @model_validator(mode="after")
    def _one(self) -> ConnectorTarget:
        if (self.service is None) == (self.model is None):
            raise ValueError("set exactly one of 'service' (a hosted service) or 'model' (a "
                             "model alias) in the connector's target")
        if self.prompt is not None and self.model is None:
            raise ValueError("'prompt' applies to a model target; a service receives the "
                             "message itself")
        return self

    @property
    def name(self) -> str:
        return self.service or self.model or ""


class _Connector(Section):
    target: ConnectorTarget | None = Field(
        None, description="The service or model alias each message, row or line is run "
        "through (required, except for a files connector with a `pipeline`).")
    api_key: SecretStr | None = Field(
        None, description="Run calls as this API key (its tenant, role, restrictions, limits "
        "and budget apply), e.g. `{$env: CONNECTOR_KEY}`. Without it: `tenant`.")
    tenant: str | None = Field(
        None, description="Without `api_key`: run calls as this tenant with the client role "
        "(default: the platform tenant, or anonymous when auth is disabled).")
    autostart: bool = Field(
        False, description="Run this connector inside `shipyard serve` (every worker process "
        "runs its own consumer). Off: run it with `shipyard connectors run NAME`.")
    concurrency: int = Field(16, ge=1, le=1024,
                             description="Calls in flight at once for this connector.")
    max_attempts: int = Field(
        3, ge=1, le=100, description="Tries of a message or row whose call failed for a "
        "passing reason (429, 5xx, timeouts) before it is dead-lettered; client mistakes "
        "(bad JSON, 4xx) are dead-lettered at once.")
    retry_backoff_s: float = Field(
        0.5, ge=0, le=600, description="Delay before the first retry; it doubles per attempt "
        "(full jitter).")
    timeout_s: float | None = Field(
        None, gt=0, le=3600, description="Longest one call may take (default: the target's own "
        "timeout).")

    @model_validator(mode="after")
    def _needs_target(self) -> _Connector:
        if self.target is None and not getattr(self, "pipeline", None):
            raise ValueError("a connector needs a 'target' ({service: NAME} or {model: ALIAS})")
        return self


class RabbitMQConnectorConfig(_Connector):
    """Consume a RabbitMQ queue (AMQP 0-9-1, aio-pika), publish each result to the message's
    `reply_to` (or `reply_queue`) with its `correlation_id`, and dead-letter poison messages."""

    kind: Literal["rabbitmq"] = Field(description="`rabbitmq`: a RabbitMQ queue consumer.")
    url: SecretStr = Field(SecretStr("amqp://guest:guest@127.0.0.1:5672/"),
                           description="AMQP URL (it holds a password: `{$env: AMQP_URL}`).")
    queue: str = Field(description="The queue requests are consumed from.")
    declare: bool = Field(
        True, description="Declare the queue, the reply queue and the dead-letter queue "
        "(durable) at start; off: they must exist.")
    reply_queue: str | None = Field(
        None, description="Where results go when a message has no `reply_to` (a message "
        "with neither is dead-lettered).")
    dead_letter_queue: str = Field(
        "", description="Where poison messages go, with the reason in their headers "
        "(default: QUEUE.dead).")
    prefetch: int = Field(64, ge=1, le=65_535, description="Unacknowledged messages the broker "
                          "sends at once (backpressure).")
    settle: Literal["transaction", "confirm"] = Field(
        "transaction", description="`transaction`: results and acks are committed together in "
        "AMQP transactions (batched), so a consumer killed mid-run neither loses nor "
        "duplicates a result. `confirm`: each result waits for its publisher confirm, then the "
        "request is acked (a crash between the two may publish a result twice).")
    commit_every: int = Field(
        200, ge=1, le=10_000, description="With `settle: transaction`: most results committed "
        "in one transaction.")

    @model_validator(mode="after")
    def _dlq(self) -> RabbitMQConnectorConfig:
        if not self.dead_letter_queue:
            object.__setattr__(self, "dead_letter_queue", f"{self.queue}.dead")
        return self


class NATSConnectorConfig(_Connector):
    """Consume a NATS JetStream stream with a durable pull consumer (nats-py), publish each
    result to JetStream, and dead-letter poison messages."""

    kind: Literal["nats"] = Field(description="`nats`: a NATS JetStream consumer.")
    url: SecretStr = Field(SecretStr("nats://127.0.0.1:4222"),
                           description="NATS server URL(s), comma-separated.")
    stream: str = Field(description="The JetStream stream requests are stored in.")
    subject: str = Field(description="The subject (filter) requests are published on.")
    durable: str = Field("", description="Durable consumer name (default: the connector's "
                         "name); consumers with the same name share the work.")
    declare: bool = Field(
        True, description="Create the stream (subjects: `subject`, the reply and dead-letter "
        "subjects) when it does not exist.")
    reply_subject: str | None = Field(
        None, description="Where results go when a message has no `Reply-To` header (a "
        "message with neither is dead-lettered).")
    dead_letter_subject: str = Field("", description="Where poison messages go (default: "
                                     "SUBJECT.dead), with the reason in their headers.")
    prefetch: int = Field(64, ge=1, le=10_000, description="Messages fetched at once "
                          "(backpressure: the next fetch waits for this batch).")
    ack_wait_s: float = Field(60.0, ge=1, le=3600, description="How long JetStream waits for "
                              "an ack before it redelivers a message.")

    @model_validator(mode="after")
    def _defaults(self) -> NATSConnectorConfig:
        if not self.dead_letter_subject:
            object.__setattr__(self, "dead_letter_subject", f"{self.subject}.dead")
        return self


class KafkaConnectorConfig(_Connector):
    """Consume a Kafka topic (aiokafka) in a consumer group, produce each result to
    `reply_topic` (acks=all), commit offsets only after the results are written."""

    kind: Literal["kafka"] = Field(description="`kafka`: a Kafka consumer group.")
    bootstrap_servers: str = Field("127.0.0.1:9092", description="host:port[,host:port...]")
    topic: str = Field(description="The topic requests are consumed from.")
    group_id: str = Field("", description="Consumer group (default: the connector's name).")
    reply_topic: str = Field(description="Where results are produced.")
    dead_letter_topic: str = Field("", description="Where poison messages go (default: "
                                   "TOPIC.dead).")
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="How to reach the brokers (TLS and/or SASL).")
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = Field(
        None, description="SASL mechanism (with a SASL security_protocol).")
    sasl_username: str | None = Field(None, description="SASL user name.")
    sasl_password: SecretStr | None = Field(None, description="SASL password: "
                                            "`{$env: KAFKA_PASSWORD}`.")
    prefetch: int = Field(64, ge=1, le=10_000, description="Most records fetched at once.")
    connect_timeout_s: float = Field(10.0, gt=0, le=300, description="How long to wait for "
                                     "the brokers at start before failing with an error.")

    @field_validator("bootstrap_servers")
    @classmethod
    def _servers(cls, value: str) -> str:
        for server in value.split(","):
            host, _, port = server.strip().rpartition(":")
            if not host or not port.isdigit():
                raise ValueError(f"bootstrap server '{server.strip()}' must be host:port "
                                 "(e.g. kafka-1:9092)")
        return value

    @model_validator(mode="after")
    def _defaults(self) -> KafkaConnectorConfig:
        if not self.dead_letter_topic:
            object.__setattr__(self, "dead_letter_topic", f"{self.topic}.dead")
        if self.security_protocol.startswith("SASL") and not (
                self.sasl_mechanism and self.sasl_username and self.sasl_password):
            raise ValueError(f"security_protocol {self.security_protocol} needs "
                             "sasl_mechanism, sasl_username and sasl_password")
        return self


class Schedule(Section):
    """When a scheduled connector runs: every N seconds, or on a cron expression."""

    every_s: float | None = Field(None, ge=1, description="Start a run this many seconds "
                                  "after the previous one started.")
    cron: str | None = Field(
        None, description="Five fields, minute hour day-of-month month day-of-week (UTC), "
        "each `*`, a number, a range `a-b`, a step `*/n` or a list: `*/15 * * * *`.")

    @field_validator("cron")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        if value is None:
            return value
        fields = value.split()
        if len(fields) != 5 or not all(_CRON_FIELD.match(f) for f in fields):
            raise ValueError(f"cron '{value}' must have five fields (minute hour day month "
                             "weekday), each *, N, a-b, */n or a list, e.g. '*/15 * * * *'")
        return value

    @model_validator(mode="after")
    def _one(self) -> Schedule:
        if (self.every_s is None) == (self.cron is None):
            raise ValueError("a schedule needs exactly one of 'every_s' or 'cron'")
        return self


class SQLConnectorConfig(_Connector):
    """Score the rows of a SQL table or query in batches through a target and upsert the
    results (with the run id) into an output table; resumable from its last key."""

    kind: Literal["sql"] = Field(description="`sql`: SQL scoring.")
    url: SecretStr = Field(description="SQLAlchemy URL of the database (PostgreSQL "
                           "`postgresql+psycopg://`, MySQL/MariaDB `mysql+pymysql://`, "
                           "`sqlite:///file.db`); it may hold a password: `{$env: DB_URL}`.")
    table: str | None = Field(None, description="The table to score (or `query`).")
    query: str | None = Field(None, description="A SELECT whose rows are scored (or `table`).")
    key: str = Field(description="A unique, ordered column: rows are read in its order and "
                     "the checkpoint is the last key scored.")
    columns: list[str] | None = Field(
        None, description="The columns that make a row's input (default: all but the key).")
    output_table: str = Field(
        description="Where results go (created when missing): the key, run_id, status, "
        "output (JSON), error, trace_id, scored_at; upserted on the key.")
    batch_size: int = Field(500, ge=1, le=100_000, description="Rows read, scored and "
                            "written (one transaction) per checkpoint.")
    schedule: Schedule | None = Field(None, description="Run on a schedule (inside `shipyard "
                                      "serve` with autostart, or `shipyard connectors run "
                                      "--schedule`).")
    incremental: bool = Field(
        False, description="A new run starts after the last key the previous finished run "
        "scored (only new rows); off: every run scores every row again.")

    @model_validator(mode="after")
    def _source(self) -> SQLConnectorConfig:
        if (self.table is None) == (self.query is None):
            raise ValueError("set exactly one of 'table' or 'query'")
        for name in filter(None, (self.table, self.output_table, self.key,
                                  *(self.columns or []))):
            if not _IDENTIFIER.match(name):
                raise ValueError(f"'{name}' is not a plain SQL name (letters, digits, _; "
                                 "optionally schema.name)")
        return self


class S3Source(Section):
    """An S3-compatible bucket watched instead of (into) the local folder."""

    bucket: str = Field(description="The bucket watched.")
    prefix: str = Field("", description="Only objects directly under this prefix (e.g. "
                        "`incoming/`).")
    done_prefix: str = Field("", description="Where finished files and their result files "
                             "are uploaded (default: PREFIX + `done/`).")
    failed_prefix: str = Field("", description="Where failed files go (default: PREFIX + "
                               "`failed/`).")
    endpoint_url: str | None = Field(None, description="An S3-compatible endpoint (MinIO, "
                                     "Ceph, R2...); default: AWS.")
    region: str | None = Field(None, description="The bucket's region.")
    access_key_id: SecretStr | None = Field(
        None, description="Access key id (`{$env: S3_ACCESS_KEY_ID}`); default: the AWS "
        "credential chain (environment, profile, instance role).")
    secret_access_key: SecretStr | None = Field(None, description="Secret access key "
                                                "(`{$env: S3_SECRET_ACCESS_KEY}`).")

    @model_validator(mode="after")
    def _prefixes(self) -> S3Source:
        if self.prefix and not self.prefix.endswith("/"):
            object.__setattr__(self, "prefix", self.prefix + "/")
        if not self.done_prefix:
            object.__setattr__(self, "done_prefix", f"{self.prefix}done/")
        if not self.failed_prefix:
            object.__setattr__(self, "failed_prefix", f"{self.prefix}failed/")
        if (self.access_key_id is None) != (self.secret_access_key is None):
            raise ValueError("set both access_key_id and secret_access_key, or neither")
        return self


class FilesConnectorConfig(_Connector):
    """Watch a folder for CSV, JSONL and Parquet files; run each row through a target (or the
    whole file through a `shipyard data` pipeline); move the file to `done/` or `failed/` with
    a result file beside it."""

    kind: Literal["files"] = Field(description="`files`: a watched folder.")
    path: str = Field(description="The folder watched for new files.")
    patterns: list[str] = Field(default_factory=lambda: ["*.csv", "*.jsonl", "*.parquet"],
                                description="File name patterns picked up.")
    done_dir: str = Field("", description="Where finished files go (default: PATH/done).")
    failed_dir: str = Field("", description="Where files that failed go (default: "
                            "PATH/failed).")
    pipeline: str | None = Field(
        None, description="A `shipyard data` pipeline YAML run on each file (its source path "
        "replaced by the file) instead of a target.")
    poll_interval_s: float = Field(2.0, gt=0, le=3600, description="How often the folder is "
                                   "listed.")
    settle_s: float = Field(1.0, ge=0, le=3600, description="A file is picked up once it has "
                            "not changed for this long (still being written otherwise).")
    s3: S3Source | None = Field(
        None, description="Watch an S3-compatible bucket: new objects are downloaded into "
        "`path` (then deleted from the bucket), processed, and uploaded with their result "
        "files to `done_prefix` or `failed_prefix`.")
    fail_on_row_errors: bool = Field(
        False, description="Move a file to failed/ when any row failed (default: done/, with "
        "the failed rows in its result file).")

    @model_validator(mode="after")
    def _dirs(self) -> FilesConnectorConfig:
        base = self.path.rstrip("/")
        if not self.done_dir:
            object.__setattr__(self, "done_dir", f"{base}/done")
        if not self.failed_dir:
            object.__setattr__(self, "failed_dir", f"{base}/failed")
        return self


AnyConnector = Annotated[
    RabbitMQConnectorConfig | NATSConnectorConfig | KafkaConnectorConfig | SQLConnectorConfig
    | FilesConnectorConfig, Field(discriminator="kind")]
ConnectorConfig: TypeAdapter[AnyConnector] = TypeAdapter(AnyConnector)
