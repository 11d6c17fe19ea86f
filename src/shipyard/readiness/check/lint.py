"""Config lint: what a shipyard.yaml (and the keys in its store) gets wrong for production.

Each rule reads the validated `Config` (plus, when given, the stored API keys) and returns
findings that name the config key, what is wrong and the fix. Nothing is sent anywhere.

>>> from shipyard.config import parse_config  # doctest: +SKIP
>>> [f.id for f in lint_security(parse_config({...}), gateway_url="http://x")]  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from urllib.parse import urlparse

from shipyard.config import Config
from shipyard.config.loader import inline_secrets
from shipyard.readiness.check.findings import Finding
from shipyard.store.tenants import KeyRecord

__all__ = ["guarded_targets", "lint_lifecycle", "lint_security", "lint_trust"]

_LOCAL = ("127.0.0.1", "localhost", "::1", "[::1]")


def _local(url: str) -> bool:
    host = (urlparse(url).hostname or "").lower()
    return host in _LOCAL or host.endswith(".local") or host.startswith("127.")


def lint_security(config: Config, *, gateway_url: str, keys: Sequence[KeyRecord] = (),
                  now: datetime | None = None) -> list[Finding]:
    """Inline secrets, authentication, CORS, TLS, admin keys without expiry, weak roles,
    lockout, rate limits, webhook and escalation signing secrets, plain-HTTP upstreams."""
    now = now or datetime.now(UTC)
    out: list[Finding] = []
    inline = inline_secrets(config)
    out.append(Finding(
        "lint.inline-secrets", "fail" if inline else "pass",
        f"{len(inline)} secret(s) written inline in the config: {', '.join(inline)}" if inline
        else "no secret is written inline in the config",
        fix="Reference each as {$env: NAME} or {$file: path} (e.g. api_keys: "
            "[{$env: SHIPYARD_API_KEY}]) and rotate the ones that were committed; `shipyard "
            "serve --strict` refuses inline secrets." if inline else "",
        evidence={"keys": inline}, weight=2.0))
    if config.auth.disabled:
        out.append(Finding(
            "lint.auth-disabled", "fail", "auth.disabled is true: every route is open to anyone "
            "who can reach the port", fix="Remove auth.disabled and set auth.api_keys: "
            "[{$env: SHIPYARD_API_KEY}] (or auth.oidc).", weight=3.0))
    cors = config.server.cors
    if "*" in cors.allow_origins:
        out.append(Finding(
            "lint.cors-open", "fail", "server.cors.allow_origins contains '*': any web page "
            "may call the API from a visitor's browser",
            fix="List the exact origins of your web apps in server.cors.allow_origins, e.g. "
                "[https://app.example.com].", evidence={"allow_origins": cors.allow_origins}))
    else:
        plain = [o for o in cors.allow_origins if o.startswith("http://") and not _local(o)]
        out.append(Finding(
            "lint.cors", "warn" if plain else "pass",
            f"server.cors.allow_origins has plain-HTTP origins: {', '.join(plain)}" if plain
            else (f"CORS limited to {len(cors.allow_origins)} origin(s)" if cors.allow_origins
                  else "no cross-origin access (server.cors.allow_origins is empty)"),
            fix="Serve those web apps over HTTPS and list their https:// origins." if plain
            else "", evidence={"allow_origins": cors.allow_origins}))
    tls = bool(config.server.tls_certfile) or gateway_url.startswith("https://")
    out.append(Finding(
        "lint.tls", "pass" if tls else "warn",
        "the gateway is reached over HTTPS" if tls else
        f"no TLS in front: the gateway answers plain HTTP at {gateway_url} and "
        "server.tls_certfile is not set",
        fix="" if tls else "Terminate TLS in front of the gateway (a load balancer or "
        "ingress), or set server.tls_certfile and server.tls_keyfile; then run the check "
        "against the https:// URL.", evidence={"url": gateway_url,
                                               "tls_certfile": config.server.tls_certfile}))
    static = len(config.auth.api_keys)
    admins = [k for k in keys if k.role == "admin" and k.status(now) == "active"]
    forever = [k for k in admins if k.expires_at is None]
    if static or forever:
        names = [f"{k.id} ({k.tenant_id}/{k.name})" for k in forever]
        out.append(Finding(
            "lint.admin-keys-expiry", "warn",
            f"{static} static admin key(s) in auth.api_keys and {len(forever)} stored admin "
            "key(s) never expire" + (f": {', '.join(names[:5])}" if names else ""),
            fix="Give admin keys an expiry (shipyard keys create --role admin --expires-in "
                "30d) and rotate them; keep auth.api_keys for bootstrap only and give "
                "applications client keys.",
            evidence={"static_keys": static, "stored_admin_keys_without_expiry": names}))
    else:
        out.append(Finding("lint.admin-keys-expiry", "pass",
                           f"every active admin key expires ({len(admins)} stored)"))
    if keys:
        weak = [k for k in keys if k.status(now) == "active" and k.role in ("admin", "operator")
                and k.tenant_id != "default" and not k.services and not k.models]
        out.append(Finding(
            "lint.weak-roles", "warn" if weak else "pass",
            f"{len(weak)} tenant key(s) hold admin or operator roles without service or model "
            "restrictions" if weak else "tenant keys use least-privilege roles",
            fix="Give applications role client (inference only) and restrict keys to their "
                "services/models (shipyard keys create --role client --service NAME)." if weak
            else "", evidence={"keys": [f"{k.id} ({k.tenant_id}/{k.role})" for k in weak[:20]]}))
    lockout = config.auth.lockout.enabled
    out.append(Finding(
        "lint.lockout", "pass" if lockout else "warn",
        "failed authentications are limited (auth.lockout)" if lockout else
        "auth.lockout.enabled is false: keys can be guessed at full speed",
        fix="" if lockout else "Set auth.lockout.enabled: true (the default)."))
    limits = [config.rate_limits.key, config.rate_limits.tenant,
              *(m.rate_limit for m in config.models.values()),
              *(s.rate_limit for s in config.services.values())]
    limited = any(r.rpm or r.tpm or r.concurrent for r in limits) or bool(config.budgets)
    out.append(Finding(
        "lint.rate-limits", "pass" if limited else "warn",
        "rate limits or budgets are configured" if limited else
        "no rate limits or budgets: one caller can use all capacity and spend",
        fix="" if limited else "Add rate_limits (per key or tenant rpm/tpm) and budgets "
        "(spend caps per tenant) in shipyard.yaml; see docs/security.md."))
    if config.server.metrics_public:
        out.append(Finding(
            "lint.metrics-public", "warn", "server.metrics_public is true: /metrics is served "
            "without a key", fix="Only on a private network; otherwise set it to false and "
            "give the scraper a viewer key."))
    unsigned = [n for n, e in config.webhooks.endpoints.items() if e.secret is None]
    plain_hooks = [n for n, e in config.webhooks.endpoints.items()
                   if e.url.get_secret_value().startswith("http://")
                   and not _local(e.url.get_secret_value())]
    unsigned += [f"escalation of {kind} {name}" for kind, items in
                 (("model", config.models), ("service", config.services))
                 for name, item in items.items()
                 if item.escalation.webhook_url and item.escalation.webhook_secret is None]
    if config.webhooks.endpoints or unsigned:
        out.append(Finding(
            "lint.webhook-secrets", "fail" if unsigned else "pass",
            f"webhooks without a signing secret: {', '.join(unsigned)}" if unsigned else
            f"all {len(config.webhooks.endpoints)} webhook endpoint(s) are signed",
            fix="Give each endpoint a secret: `shipyard webhooks secret` makes one; reference "
                "it as {$env: NAME} under webhooks.endpoints.NAME.secret." if unsigned else ""))
    if plain_hooks:
        out.append(Finding(
            "lint.webhook-tls", "warn", f"webhook endpoints over plain HTTP: "
            f"{', '.join(plain_hooks)}", fix="Use https:// URLs for webhook receivers."))
    plain_up = sorted(n for n, p in config.providers.items()
                      if p.base_url and p.base_url.startswith("http://") and not _local(p.base_url))
    if plain_up:
        out.append(Finding(
            "lint.upstream-tls", "warn", f"providers reached over plain HTTP off this machine: "
            f"{', '.join(plain_up)}", fix="Use https:// base_url for remote upstreams."))
    return out


def guarded_targets(config: Config) -> dict[str, list[str]]:
    """Each chat model and service with the input guards it runs."""
    out = {f"model {n}": [g.guard for g in m.guards.input]
           for n, m in config.models.items() if m.type == "chat"}
    out.update({f"service {n}": [g.guard for g in s.guards.input]
                for n, s in config.services.items()})
    return out


def lint_trust(config: Config) -> list[Finding]:
    """Input and output guards, PII handling and escalation on each chat model and service."""
    out: list[Finding] = []
    targets = guarded_targets(config)
    bare = sorted(t for t, guards in targets.items() if not guards)
    out.append(Finding(
        "lint.input-guards", "fail" if bare else "pass",
        f"{len(bare)} of {len(targets)} target(s) run no input guard: {', '.join(bare)}" if bare
        else f"every target runs input guards ({len(targets)})",
        fix="Add guards, e.g. models.NAME.guards.input: [{guard: injection}, {guard: "
            "harmful}] (see docs/guards.md)." if bare else "",
        evidence={"guards": targets}, weight=2.0))
    items = [(f"model {n}", m.guards.output, m.pii.mode, m.escalation.enabled)
             for n, m in config.models.items() if m.type == "chat"]
    items += [(f"service {n}", s.guards.output, s.pii.mode, s.escalation.enabled)
              for n, s in config.services.items()]
    no_out = sorted(name for name, output, _, _ in items if not output)
    out.append(Finding(
        "lint.output-guards", "warn" if no_out else "pass",
        f"no output guard on {', '.join(no_out)}" if no_out else "every target checks answers",
        fix="Add output guards (e.g. {guard: pii}, {guard: secrets}) under "
            "guards.output." if no_out else ""))
    no_pii = sorted(name for name, _, mode, _ in items if mode == "off")
    out.append(Finding(
        "lint.pii", "warn" if no_pii else "pass",
        f"PII handling is off on {', '.join(no_pii)}" if no_pii else
        "PII is handled on every target",
        fix="Set pii.mode: redact (or pseudonymize) on targets that see personal data." if
        no_pii else ""))
    return out


def lint_lifecycle(config: Config) -> list[Finding]:
    """Alert rules and channels, SLOs, drift checks, trace retention."""
    out: list[Finding] = []
    rules, channels = config.alerts.rules, config.alerts.channels
    if not rules and not config.slos:
        out.append(Finding(
            "lint.alerts", "fail", "no alert rules and no SLOs: nobody hears when it breaks",
            fix="Add alerts.rules (e.g. error rate > 5% for 5m) and slos (availability "
                "0.999) with a channel (see docs/alerts.md).", weight=2.0))
    else:
        out.append(Finding("lint.alerts", "pass",
                           f"{len(rules)} alert rule(s) and {len(config.slos)} SLO(s)",
                           evidence={"rules": [r.name for r in rules],
                                     "slos": [s.name for s in config.slos]}))
    out.append(Finding(
        "lint.alert-channels", "pass" if channels else "fail",
        f"{len(channels)} notification channel(s)" if channels else
        "no alert channel: alerts only show on the dashboard",
        fix="" if channels else "Add alerts.channels (webhook, slack or email) and name "
        "them in rules.", evidence={"channels": [c.name for c in channels]}))
    out.append(Finding(
        "lint.slos", "pass" if config.slos else "warn",
        f"{len(config.slos)} SLO(s) with burn-rate alerts" if config.slos else "no SLOs",
        fix="" if config.slos else "Add slos: an availability and a latency objective per "
        "user-facing target (see docs/alerts.md)."))
    drift = config.drift.checks
    out.append(Finding(
        "lint.drift", "pass" if drift else "warn",
        f"{len(drift)} drift check(s)" if drift else "no drift checks",
        fix="" if drift else "Add drift.checks to compare recent traffic with a reference "
        "window (see docs/drift.md).", evidence={"checks": sorted(drift)}))
    retention = config.traces.retention
    kept = retention.days is not None or retention.payload_days is not None
    out.append(Finding(
        "lint.retention", "pass" if kept else "warn",
        f"traces kept {retention.days or 'forever'} day(s), payloads "
        f"{retention.payload_days or 'as long'}" if kept else
        "traces and their payloads are kept forever (traces.retention unset)",
        fix="" if kept else "Set traces.retention.days (and payload_days for personal data) "
        "to what your privacy policy promises."))
    return out
