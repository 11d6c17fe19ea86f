"""An S3-compatible bucket as a file drop (boto3, the `s3` extra): objects directly under a
prefix are downloaded into the connector's local folder and deleted from the bucket (the
local folder is then the durable copy: a process that dies after the download finds the file
there on restart); finished files and their result files are uploaded to the done or failed
prefix and removed locally.

One watcher per bucket prefix: S3 has no atomic rename, so two watchers of one prefix could
both download an object before either deletes it.
"""

from __future__ import annotations

import fnmatch
import logging
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from shipyard.config.connectors import S3Source
from shipyard.errors import ConfigError

__all__ = ["S3Inbox"]

log = logging.getLogger("shipyard.connectors")


class S3Inbox:
    """The bucket side of a files connector with `s3:`."""

    def __init__(self, config: S3Source, connector: str) -> None:
        try:  # optional: the s3 extra
            import boto3
        except ImportError as exc:
            raise ConfigError(f"connectors.{connector}.s3 needs boto3 ({exc}); install it with "
                              "pip install 'shipyard[s3]'.") from None
        self.config = config
        self.connector = connector
        options: dict[str, Any] = {}
        if config.endpoint_url:
            options["endpoint_url"] = config.endpoint_url
        if config.region:
            options["region_name"] = config.region
        if config.access_key_id is not None and config.secret_access_key is not None:
            options["aws_access_key_id"] = config.access_key_id.get_secret_value()
            options["aws_secret_access_key"] = config.secret_access_key.get_secret_value()
        self.client = boto3.client("s3", **options)

    def fetch(self, folder: Path, patterns: list[str], settle_s: float) -> int:
        """Download the settled objects under the prefix into `folder`, delete them from the
        bucket; how many."""
        cfg = self.config
        settled = datetime.now(UTC) - timedelta(seconds=settle_s)
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=cfg.bucket, Prefix=cfg.prefix, Delimiter="/")
        taken = 0
        for page in pages:
            for item in page.get("Contents", []):
                key = item["Key"]
                name = key[len(cfg.prefix):]
                if not name or not any(fnmatch.fnmatch(name, p) for p in patterns):
                    continue
                if item["LastModified"] > settled:
                    continue
                partial = folder / f".download-{name}"
                self.client.download_file(cfg.bucket, key, str(partial))
                os.replace(partial, folder / name)
                self.client.delete_object(Bucket=cfg.bucket, Key=key)
                taken += 1
        return taken

    def upload(self, files: list[Path], *, done: bool) -> None:
        """Upload a finished file and its result files; remove the local copies."""
        prefix = self.config.done_prefix if done else self.config.failed_prefix
        for path in files:
            self.client.upload_file(str(path), self.config.bucket, prefix + path.name)
        for path in files:
            path.unlink(missing_ok=True)
