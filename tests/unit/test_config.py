"""`shipyard.config`: the loader's error messages and the generated configuration reference."""

from __future__ import annotations

from pathlib import Path

import pytest

from shipyard.config import Config, iter_settings, load_config, parse_config
from shipyard.config.docs import render_reference
from shipyard.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
KEY = "sk-unit-test-key-0123456789"
MINIMAL = """
auth:
  api_keys:
    - {$env: TEST_GATEWAY_KEY}
providers:
  sim:
    kind: sim
models:
  demo:
    provider: sim
"""


def config_error(text: str, *, environ: dict[str, str] | None = None,
                 source: str = "conf/shipyard.yaml") -> str:
    """Parse `text` expecting a ConfigError; return its message."""
    with pytest.raises(ConfigError) as info:
        parse_config(text, source=source, environ=environ or {})
    return info.value.message


def test_minimal_config_is_valid_and_resolves_env_secrets() -> None:
    config = parse_config(MINIMAL, environ={"TEST_GATEWAY_KEY": KEY})

    assert isinstance(config, Config)
    assert [k.get_secret_value() for k in config.auth.api_keys] == [KEY]
    assert config.models["demo"].provider == "sim"
    assert config.server.port == 8000
    assert KEY not in repr(config)  # held as an opaque secret


def test_empty_text_gives_defaults_with_auth_disabled() -> None:
    config = parse_config("", environ={})
    assert config.auth.disabled is True
    assert config.providers == {}


def test_malformed_yaml_names_source_and_line() -> None:
    message = config_error("server:\n  host: 127.0.0.1\n  port: [8000\n  workers: 2\n")
    assert message.startswith("conf/shipyard.yaml: ")
    assert "not valid YAML at line 4" in message
    assert "Fix the syntax" in message


def test_top_level_must_be_a_mapping() -> None:
    message = config_error("- server\n- models\n")
    assert "conf/shipyard.yaml" in message
    assert "top level must be a mapping" in message
    assert "not a list" in message


def test_unknown_key_suggests_the_right_one() -> None:
    message = config_error("server:\n  hots: 0.0.0.0\n")
    assert "conf/shipyard.yaml" in message
    assert "'server.hots'" in message
    assert "did you mean 'host'" in message
    assert "remove it or check the spelling" in message


def test_out_of_range_value_names_key_value_and_bound() -> None:
    message = config_error("server:\n  port: -1\n")
    assert "conf/shipyard.yaml" in message
    assert "'server.port' is -1" in message
    assert "greater than or equal to 1" in message
    assert "TCP port" in message  # the setting's help says what it is


def test_wrong_type_names_key_and_value() -> None:
    message = config_error("traces:\n  enabled: maybe\n")
    assert "'traces.enabled' is 'maybe'" in message
    assert "boolean" in message


def test_several_problems_are_listed_together() -> None:
    message = config_error("server:\n  port: 0\n  workers: 0\n")
    assert "2 problems" in message
    assert "'server.port'" in message
    assert "'server.workers'" in message


def test_missing_env_variable_names_it_and_says_export() -> None:
    message = config_error(MINIMAL)
    assert "conf/shipyard.yaml" in message
    assert "'auth.api_keys[0]'" in message
    assert "TEST_GATEWAY_KEY" in message
    assert "export TEST_GATEWAY_KEY=" in message


def test_file_secret_is_read_relative_to_the_config_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "key.txt").write_text(KEY + "\n")
    config_file = tmp_path / "shipyard.yaml"
    config_file.write_text(MINIMAL.replace("{$env: TEST_GATEWAY_KEY}",
                                           "{$file: secrets/key.txt}"))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # relative to the file, not to the working directory

    config = load_config(config_file, environ={})

    assert config.auth.api_keys[0].get_secret_value() == KEY  # stripped of the newline


def test_missing_file_secret_names_key_and_path(tmp_path: Path) -> None:
    config_file = tmp_path / "shipyard.yaml"
    config_file.write_text(MINIMAL.replace("{$env: TEST_GATEWAY_KEY}", "{$file: nope.txt}"))

    with pytest.raises(ConfigError) as info:
        load_config(config_file, environ={})

    message = info.value.message
    assert str(config_file) in message
    assert "'auth.api_keys[0]'" in message
    assert str(tmp_path / "nope.txt") in message
    assert "create it or fix the path" in message


def test_missing_config_file_says_how_to_create_one(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "absent.yaml", environ={})
    assert "absent.yaml" in info.value.message
    assert "shipyard init" in info.value.message


def test_secret_reference_with_extra_keys_is_rejected() -> None:
    message = config_error("auth:\n  api_keys:\n    - {$env: A, extra: 1}\n",
                           environ={"A": KEY})
    assert "'auth.api_keys[0]'" in message
    assert "'$env', 'extra'" in message
    assert "exactly one of {$env: NAME} or {$file: path}" in message


def test_model_with_unknown_provider() -> None:
    message = config_error(
        "providers:\n  sim:\n    kind: sim\nmodels:\n  demo:\n    provider: simm\n")
    assert "conf/shipyard.yaml" in message
    assert "models.demo.provider is 'simm'" in message
    assert "known: sim" in message
    assert "add it under 'providers'" in message


def test_openai_provider_needs_base_url() -> None:
    message = config_error("providers:\n  up:\n    kind: openai\n")
    assert "'providers.up'" in message
    assert "needs 'base_url'" in message
    assert "base_url: http://" in message


def test_auth_without_keys_and_not_disabled() -> None:
    message = config_error("auth:\n  api_keys: []\n")
    assert "'auth'" in message
    assert "no API keys are configured" in message
    assert "auth.disabled: true" in message
    assert "{$env: SHIPYARD_API_KEY}" in message


def test_short_api_key_is_rejected_without_showing_it() -> None:
    message = config_error("auth:\n  api_keys:\n    - {$env: SHORT}\n",
                           environ={"SHORT": "abc1234"})
    assert "at least 8 characters" in message
    assert "abc1234" not in message


@pytest.mark.parametrize("text", [
    # a secret inlined where a string is expected, in a wrong shape
    "providers:\n  up:\n    kind: openai\n    base_url: http://127.0.0.1:1/v1\n"
    "    api_key: [SECRET]\n",
    "providers:\n  up:\n    kind: openai\n    base_url: http://127.0.0.1:1/v1\n"
    "    api_key: {token: SECRET}\n",
    "auth:\n  api_keys: SECRET\n",
    "auth:\n  api_keys:\n    - [SECRET]\n",
])
def test_secrets_never_appear_in_errors(text: str) -> None:
    secret = "sk-live-DO-NOT-PRINT-4242"
    message = config_error(text.replace("SECRET", secret))
    assert "api_key" in message  # the key path is still named
    assert "value hidden" in message
    assert secret not in message


def test_env_override_of_a_scalar_setting() -> None:
    config = parse_config("server:\n  port: 8000\n", environ={"SHIPYARD_SERVER_PORT": "9001"})
    assert config.server.port == 9001


def test_env_override_is_validated_like_the_file() -> None:
    message = config_error("", environ={"SHIPYARD_SERVER_PORT": "nine"})
    assert "'server.port' is 'nine'" in message
    assert "integer" in message


@pytest.mark.parametrize(("name", "expected"), [
    ("SHIPYARD_SERVER_HOTS", "did you mean 'host'"),
    ("SHIPYARD_STORE_URLL", "did you mean 'url'"),
    ("SHIPYARD_TRACES_QUEUE", "names no setting 'traces.queue'"),
])
def test_override_naming_no_setting_is_rejected(name: str, expected: str) -> None:
    message = config_error("", environ={name: "1"})
    assert name in message
    assert expected in message


def test_other_shipyard_variables_are_not_overrides() -> None:
    # Free for secrets and tooling; and auth can never be switched off from the environment.
    config = parse_config("auth: {api_keys: [{$env: SHIPYARD_API_KEY}]}", environ={
        "SHIPYARD_API_KEY": KEY, "SHIPYARD_CONFIG": "x.yaml", "SHIPYARD_AUTH_DISABLED": "true",
        "SHIPYARD_REQUIRE_SERVICES": "1", "SHIPYARD_SERVR_PORT": "1"})
    assert config.server.port == 8000
    assert config.auth.disabled is False


def test_secrets_false_uses_a_placeholder_for_unresolvable_references(tmp_path: Path) -> None:
    config_file = tmp_path / "shipyard.yaml"
    config_file.write_text("""
store:
  url: sqlite:///traces.db
auth:
  api_keys:
    - {$env: TEST_GATEWAY_KEY}
providers:
  up:
    kind: openai
    base_url: http://127.0.0.1:1/v1
    api_key: {$file: missing-secret.txt}
""")
    with pytest.raises(ConfigError):
        load_config(config_file, environ={})

    config = load_config(config_file, environ={}, secrets=False)

    assert config.store.url == "sqlite:///traces.db"
    placeholder = config.auth.api_keys[0].get_secret_value()
    assert placeholder
    assert config.providers["up"].api_key is not None
    assert config.providers["up"].api_key.get_secret_value() == placeholder


def test_reference_doc_is_up_to_date() -> None:
    doc = REPO / "docs" / "configuration.md"
    assert doc.exists(), "generate it: shipyard config docs -o docs/configuration.md"
    assert doc.read_text(encoding="utf-8") == render_reference(), (
        "docs/configuration.md is stale; run: shipyard config docs -o docs/configuration.md")


def test_every_setting_is_documented() -> None:
    doc = (REPO / "docs" / "configuration.md").read_text(encoding="utf-8")
    settings = list(iter_settings())
    assert len(settings) > 30
    undocumented = [s.path for s in settings if f"| `{s.path}` |" not in doc]
    assert undocumented == []
    missing_help = [s.path for s in settings if not s.help.strip()]
    assert missing_help == [], "every setting needs a description in config/schema.py"


def test_settings_table_covers_every_schema_field() -> None:
    paths = {s.path for s in iter_settings()}
    assert {"server.port", "store.url", "traces.queue_size", "auth.api_keys",
            "providers.NAME.base_url", "models.ALIAS.capture",
            "services.NAME.input_schema"} <= paths
    for section in ("server", "store", "traces", "auth"):
        model = Config.model_fields[section].annotation
        for field in model.model_fields:  # type: ignore[union-attr]
            path = f"{section}.{field}"
            # a nested section is documented by its own settings (server.cors.allow_origins)
            assert path in paths or any(p.startswith(path + ".") for p in paths), path
