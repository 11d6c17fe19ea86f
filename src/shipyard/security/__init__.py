"""Security: API keys and tenants, roles and scopes, OIDC tokens, audit, limits and budgets."""
