"""The `auth:`, `rate_limits:`, `pricing:` and `budgets:` sections: who may call, how often and
at what cost.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator

from shipyard.config.base import Role, Section

__all__ = [
    "JWT_ALGORITHMS",
    "AuthConfig",
    "BudgetConfig",
    "LockoutConfig",
    "OIDCConfig",
    "PriceConfig",
    "RateLimitConfig",
    "RateLimitsConfig",
]


JWT_ALGORITHMS = ("RS256", "ES256")


class OIDCConfig(Section):
    issuer: str = Field(
        description="Expected `iss` claim, exactly as the identity provider writes it (e.g. "
        "`https://idp.example.com/realms/acme`; mind a trailing slash)."
    )
    audience: str | list[str] = Field(
        description="Accepted `aud` value(s): a token must name at least one (the API's "
        "identifier or client id at the identity provider)."
    )
    jwks_file: str | None = Field(
        None,
        description="Path of a JWKS (JSON Web Key Set) file with the signing keys; relative "
        "to the working directory. Set this or `jwks_url`.",
    )
    jwks_url: str | None = Field(
        None,
        description="URL of the identity provider's JWKS (`jwks_uri` in its "
        "`/.well-known/openid-configuration`). Set this or `jwks_file`.",
    )
    jwks_cache_s: float = Field(
        600.0, gt=0, description="How long fetched signing keys are used before a refresh."
    )
    jwks_min_refresh_s: float = Field(
        30.0,
        ge=0,
        description="Least time between two JWKS refreshes caused by unknown `kid`s, so a "
        "flood of bad tokens cannot hammer the identity provider.",
    )
    jwks_timeout_s: float = Field(
        5.0, gt=0, le=60, description="Longest one JWKS fetch from `jwks_url` may take."
    )
    algorithms: list[str] = Field(
        default_factory=lambda: list(JWT_ALGORITHMS),
        description="Signature algorithms accepted: `RS256` and/or `ES256` (never `none` or "
        "HMAC).",
    )
    tenant_claim: str = Field(
        "tenant",
        description="Claim holding the tenant id; a dotted path (`org.id`) reaches into "
        "nested claims.",
    )
    role_claim: str = Field(
        "role",
        description="Claim holding the role (admin, operator, developer, client, viewer); "
        "a dotted path such as `realm_access.roles` may hold a list, and the "
        "highest-privilege known role in it wins.",
    )
    default_role: Role | None = Field(
        None, description="Role of a token without a role claim (none: such tokens are refused)."
    )
    leeway_s: float = Field(
        60.0, ge=0, le=600, description="Clock skew allowed on `exp`, `nbf` and `iat`, in seconds."
    )

    @field_validator("issuer", "tenant_claim", "role_claim")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        return value

    @field_validator("audience")
    @classmethod
    def _some_audience(cls, value: str | list[str]) -> str | list[str]:
        values = [value] if isinstance(value, str) else value
        if not values or not all(v.strip() for v in values):
            raise ValueError("must name at least one non-empty audience, e.g. audience: shipyard")
        return value

    @field_validator("algorithms")
    @classmethod
    def _asymmetric_only(cls, value: list[str]) -> list[str]:
        bad = [a for a in value if a not in JWT_ALGORITHMS]
        if bad or not value:
            raise ValueError(
                f"may only list {' and '.join(JWT_ALGORITHMS)}, got {value!r}; 'none' and "
                "HMAC (HS256) are refused because a shared secret would let any holder mint "
                "tokens"
            )
        return value

    @model_validator(mode="after")
    def _one_key_source(self) -> OIDCConfig:
        if (self.jwks_file is None) == (self.jwks_url is None):
            raise ValueError(
                "set exactly one of 'jwks_file' (a local JWKS file) or 'jwks_url' (the "
                "identity provider's jwks_uri)"
            )
        if self.jwks_url is not None and not self.jwks_url.startswith(("https://", "http://")):
            raise ValueError(f"jwks_url '{self.jwks_url}' must start with https:// or http://")
        return self

    def audiences(self) -> list[str]:
        """`audience` as a list."""
        return [self.audience] if isinstance(self.audience, str) else list(self.audience)


class LockoutConfig(Section):
    """Failed-authentication limiting: brute force meets 429s, not an oracle."""

    enabled: bool = Field(
        True, description="Limit failed authentications per client address and per key id.")
    window_s: float = Field(
        60.0, gt=0, le=86_400, description="The failure budgets below refill over this many "
        "seconds (a token bucket per client address and per key id).")
    max_failures_per_address: int = Field(
        30, ge=1, description="Failed attempts (wrong, unknown, revoked or expired keys, bad "
        "tokens) one client address may make per window; beyond it its attempts get 429 with "
        "Retry-After and are not checked at all.")
    max_failures_per_key: int = Field(
        20, ge=1, description="Failed attempts on one existing key id (from any address) per "
        "window; beyond it attempts on that key id get 429 with Retry-After.")
    known_good_s: float = Field(
        3600.0, ge=0, description="A client address that authenticated with a key in the last "
        "this many seconds keeps using that key while its address or key id is locked out, so "
        "an attacker cannot lock a working client out (0: no exemption).")
    max_tracked: int = Field(
        100_000, ge=100, description="Most addresses and key ids tracked at once (memory "
        "bound); the quietest are forgotten first.")


class AuthConfig(Section):
    api_keys: list[SecretStr] = Field(
        default_factory=list,
        description="Static API keys accepted as `Authorization: Bearer <key>`. Reference "
        "them as `{$env: NAME}` or `{$file: path}`; never inline a secret.",
    )
    disabled: bool = Field(
        False,
        description="Serve without authentication. Only for a laptop: every route is open.",
    )
    oidc: OIDCConfig | None = Field(
        None,
        description="Also accept bearer JWTs from an OpenID Connect identity provider "
        "(see docs/oidc.md).",
    )
    key_cache_s: float = Field(
        5.0, gt=0, le=300, description="How long a stored key's record is used before it is "
        "read again: a revocation made through another gateway (or the CLI) applies within "
        "this time.")
    key_ids_refresh_s: float = Field(
        1.0, gt=0, le=60, description="How often the set of existing key ids is re-read. A "
        "request with an unknown key id waits for the next read (at most this long) before "
        "its 401: one query per interval however many random ids arrive, and a key just "
        "created on another replica is found within it.")
    outage_grace_s: float = Field(
        900.0, ge=0, le=7 * 86_400, description="While the store is unreachable, keys are "
        "checked against their last known records if those were read at most this many "
        "seconds ago (revocations and expiries seen before stay in force); other keys get 503 "
        "with Retry-After. 0: no grace, every key needs the store.")
    lockout: LockoutConfig = Field(
        default_factory=lambda: LockoutConfig(),
        description="Limits on failed authentications (see docs/security.md).")

    @model_validator(mode="after")
    def _keys_or_disabled(self) -> AuthConfig:
        if not self.api_keys and not self.disabled and self.oidc is None:
            raise ValueError(
                "no API keys are configured; add 'auth.api_keys: [{$env: SHIPYARD_API_KEY}]', "
                "configure 'auth.oidc' (see docs/oidc.md) "
                "or set 'auth.disabled: true' for a local-only setup"
            )
        for key in self.api_keys:
            if len(key.get_secret_value()) < 8:
                raise ValueError("every API key must be at least 8 characters long")
        return self


class RateLimitConfig(Section):
    rpm: int | None = Field(None, ge=1, description="Requests per minute (a burst of this many, "
                            "then an even refill).")
    tpm: int | None = Field(
        None, ge=1, description="Tokens per minute: estimated before the call (prompt + "
        "max_tokens), reconciled with the real usage after it.")
    concurrent: int | None = Field(None, ge=1, description="Requests in flight at once.")


class RateLimitsConfig(Section):
    key: RateLimitConfig = Field(
        default_factory=lambda: RateLimitConfig(),
        description="Default limits of every API key (a key's own rpm/tpm/max_concurrent win).")
    tenant: RateLimitConfig = Field(
        default_factory=lambda: RateLimitConfig(),
        description="Limits of each tenant, all its keys together.")
    default_max_tokens: int = Field(
        512, ge=1, description="Answer tokens assumed for the tpm estimate when a request "
        "sets no max_tokens.")


class PriceConfig(Section):
    input_per_1m: float = Field(ge=0, description="USD per million prompt tokens.")
    output_per_1m: float = Field(0.0, ge=0, description="USD per million completion tokens.")


class BudgetConfig(Section):
    tenant: str | None = Field(None, description="The tenant this budget caps (or `key`).")
    key: str | None = Field(None, description="The API key id this budget caps (or `tenant`).")
    period: Literal["day", "month"] = Field("month", description="`day` or `month` (UTC).")
    limit_usd: float = Field(gt=0, description="Hard limit: requests are refused beyond it.")
    soft_ratio: float = Field(
        0.8, gt=0, le=1, description="Share of the limit that raises an alert event (logged, "
        "counted in `shipyard_budget_alerts_total` and audited).")

    @model_validator(mode="after")
    def _one_scope(self) -> BudgetConfig:
        if (self.tenant is None) == (self.key is None):
            raise ValueError("a budget names exactly one of 'tenant' or 'key'")
        return self
