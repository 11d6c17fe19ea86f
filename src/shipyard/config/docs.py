"""Generate the configuration reference (`docs/configuration.md`) from the settings table."""

from __future__ import annotations

from shipyard.config.schema import iter_settings

__all__ = ["render_reference"]

_INTRO = """\
# Configuration reference

Generated from the settings table in `src/shipyard/config/schema.py` by
`shipyard config docs --output docs/configuration.md`; a test fails when this file is out of
date. Every setting lives in `shipyard.yaml` (validated at startup; `shipyard config check`
validates without serving).

## Secrets
Never write a secret into the file. Reference it instead, and Shipyard reads it at startup:

```yaml
auth:
  api_keys:
    - {$env: SHIPYARD_API_KEY}        # from an environment variable
    - {$file: /run/secrets/team-key}  # from a file (relative paths are relative to the config)
```

Secrets are held as opaque values: they never appear in logs, errors, traces or `config check`.

## Environment overrides
Scalar settings of `server`, `store` and `traces` can be overridden with
`SHIPYARD_<SECTION>_<KEY>`, e.g. `SHIPYARD_SERVER_PORT=9000` or
`SHIPYARD_STORE_URL=postgresql+psycopg://app@db:5432/shipyard`. `SHIPYARD_CONFIG` names the
config file when `--config` is not given. A `SHIPYARD_SERVER_*`, `SHIPYARD_STORE_*` or
`SHIPYARD_TRACES_*` variable that names no setting is an error (with a suggestion), so a typo
cannot silently do nothing; other `SHIPYARD_*` names are free for your own secrets.

## Settings
"""


def render_reference() -> str:
    """The Markdown reference: one table row per setting."""
    lines = [_INTRO, "| setting | type | default | description |", "|---|---|---|---|"]
    for s in iter_settings():
        help_text = s.help.replace("|", "\\|").replace("\n", " ")
        lines.append(f"| `{s.path}` | `{s.type}` | `{s.default}` | {help_text} |")
    return "\n".join(lines) + "\n"
