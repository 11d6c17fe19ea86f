"""Model aliases have versions: each alias's configuration, registered as kind `config`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from shipyard.config import parse_config
from shipyard.errors import ConfigError
from shipyard.lifecycle import registry
from shipyard.lifecycle.aliases import (
    alias_config,
    alias_target,
    model_config_of,
    register_aliases,
)
from shipyard.store import create_store_engine, migrate

BASE = """
providers:
  up: {kind: openai, base_url: "https://user:pw@llm.example/v1?key=abc",
       api_key: sk-live-secret-1}
models:
  chat:
    provider: up
    model: gpt-small
    guards:
      output:
        - {guard: "grounding", action: flag}
        - {guard: "tests.fake:Judge", api_key: judge-secret-1, limit: 3}
  embed: {provider: up, type: embedding}
"""


@pytest.fixture
def engine(tmp_path: Path) -> Any:
    engine = create_store_engine(f"sqlite:///{tmp_path}/store.db")
    migrate(engine)
    yield engine
    engine.dispose()


def test_a_config_is_a_version_until_it_changes(engine: Any) -> None:
    assert register_aliases(engine, parse_config(BASE)) == {"chat": 1, "embed": 1}
    assert register_aliases(engine, parse_config(BASE)) == {"chat": 1, "embed": 1}
    changed = BASE.replace("model: gpt-small", "model: gpt-large")
    assert register_aliases(engine, parse_config(changed)) == {"chat": 2, "embed": 1}
    assert registry.aliases_of(engine, alias_target("chat"))["model/chat"] == {
        "stable": 2, "config": 2}
    # Going back to the earlier config is the earlier version again, and stable follows.
    assert register_aliases(engine, parse_config(BASE)) == {"chat": 1, "embed": 1}
    assert registry.aliases_of(engine, "model/chat")["model/chat"] == {
        "stable": 1, "config": 1}
    versions = registry.list_versions(engine, "model/chat")
    assert [(v.number, v.kind) for v in versions] == [(1, "config"), (2, "config")]
    second = versions[1].config
    assert second["deployments"][0]["model"] == "gpt-large"
    assert second["deployments"][0]["provider_config"]["kind"] == "openai"
    events = [e["event"] for e in registry.list_events(engine, "model/chat")]
    assert events.count("registered") == 2 and events.count("promoted") == 3


def test_what_a_version_holds_and_what_it_never_holds(engine: Any) -> None:
    config = parse_config(BASE)
    data = alias_config("chat", config.models["chat"], config)
    text = orjson.dumps(data).decode()
    assert "sk-live-secret-1" not in text and "judge-secret-1" not in text
    assert "pw@" not in text and "key=abc" not in text
    deployment = data["deployments"][0]
    assert deployment["provider_config"]["base_url"] == "https://llm.example/v1"
    guards = data["settings"]["guards"]["output"]
    assert [g["guard"] for g in guards] == ["grounding", "tests.fake:Judge"]
    assert guards[1]["options"] == {"api_key": "<redacted>", "limit": 3}
    # Rotating a key is not a new version; a guard option is.
    rotated = BASE.replace("sk-live-secret-1", "sk-live-secret-2").replace(
        "judge-secret-1", "judge-secret-2")
    register_aliases(engine, config)
    assert register_aliases(engine, parse_config(rotated))["chat"] == 1
    assert register_aliases(engine, parse_config(BASE.replace("limit: 3", "limit: 4")))[
        "chat"] == 2


def test_a_promoted_version_stays_until_the_config_changes(engine: Any) -> None:
    config = parse_config(BASE)
    register_aliases(engine, config)
    larger = parse_config(BASE.replace("gpt-small", "gpt-large"))
    register_aliases(engine, larger)  # version 2 deploys: stable
    started = registry.start_rollout(engine, "model/chat", 1, mode="canary", share=5,
                                     actor="t")
    assert (started.candidate, started.stable) == (1, 2)
    assert registry.routing(engine)["model/chat"].candidate == 1
    registry.finish_rollout(engine, started, "promoted", actor="t", reason="gates passed")
    # Restarts and reloads of the unchanged config keep the promoted version.
    register_aliases(engine, larger)
    assert registry.aliases_of(engine, "model/chat")["model/chat"] == {
        "stable": 1, "config": 2}
    assert registry.rollback(engine, "model/chat", actor="t") == ("stable", 2)
    registry.promote(engine, "model/chat", 1, actor="t")
    # A changed config file deploys what it names (a new version here).
    register_aliases(engine, parse_config(BASE.replace("gpt-small", "gpt-huge")))
    assert registry.aliases_of(engine, "model/chat")["model/chat"] == {
        "stable": 3, "config": 3}
    # Registering a candidate from elsewhere does not deploy it.
    other = parse_config(BASE.replace("gpt-small", "gpt-tiny"))
    version, new = registry.register_config(
        engine, "model/chat", alias_config("chat", other.models["chat"], other),
        actor="t", deploy=False)
    assert new and version.number == 4
    assert registry.aliases_of(engine, "model/chat")["model/chat"]["stable"] == 3


def test_a_version_is_served_with_the_configs_secrets_and_providers(engine: Any) -> None:
    config = parse_config(BASE)
    stored = orjson.loads(orjson.dumps(alias_config("chat", config.models["chat"], config)))
    model = model_config_of("chat", stored, config)
    assert model.guards.output[1].options == {"api_key": "judge-secret-1", "limit": 3}
    assert [(d.provider, d.model) for d in model.targets("chat")] == [("up", "gpt-small")]
    moved = parse_config(BASE.replace("llm.example", "other.example"))
    with pytest.raises(ConfigError, match="sends to provider 'up'"):
        model_config_of("chat", stored, moved)
    bare = parse_config(BASE.replace(", api_key: judge-secret-1", ""))
    with pytest.raises(ConfigError, match="holds a secret"):
        model_config_of("chat", stored, bare)
