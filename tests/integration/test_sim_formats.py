"""`shipyard sim --format KIND` speaks each provider's wire API: the providers' own official
SDKs (anthropic, google-genai, boto3 with its SigV4 signing, ollama) are its clients here."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Callable

import anthropic
import boto3
import ollama
import pytest
from google import genai
from google.genai import types

from conftest import Proc

HELLO = "Hello there"


def test_anthropic_sdk(start_sim: Callable[..., Proc]) -> None:
    sim = start_sim("--format", "anthropic", "--api-key", "sk-ant-test")
    client = anthropic.Anthropic(base_url=sim.url, api_key="sk-ant-test", max_retries=0)
    message = client.messages.create(model="claude-sim", max_tokens=200, system="Be terse.",
                                     messages=[{"role": "user", "content": HELLO}])
    assert message.stop_reason == "end_turn" and message.usage.input_tokens > 0
    with client.messages.stream(model="claude-sim", max_tokens=200,
                                messages=[{"role": "user", "content": HELLO}]) as stream:
        final = stream.get_final_message()
    assert final.content[0].text == message.content[0].text  # type: ignore[union-attr]
    tool = client.messages.create(
        model="claude-sim", max_tokens=100, messages=[{"role": "user", "content": "Weather?"}],
        tools=[{"name": "get_weather", "input_schema": {
            "type": "object", "properties": {"city": {"type": "string"}}}}],
        tool_choice={"type": "tool", "name": "get_weather"})
    assert tool.stop_reason == "tool_use"
    assert isinstance(tool.content[0].input["city"], str)  # type: ignore[union-attr]
    client.close()
    with anthropic.Anthropic(base_url=sim.url, api_key="wrong", max_retries=0) as wrong, \
            pytest.raises(anthropic.AuthenticationError):
        wrong.messages.create(model="c", max_tokens=5, messages=[{"role": "user", "content": "x"}])


def test_gemini_sdk(start_sim: Callable[..., Proc]) -> None:
    sim = start_sim("--format", "gemini", "--api-key", "g-key", "--error-rate", "429=0")
    client = genai.Client(api_key="g-key", http_options=types.HttpOptions(base_url=sim.url))
    answer = client.models.generate_content(model="gemini-sim", contents=HELLO)
    assert answer.text and answer.usage_metadata is not None
    assert answer.usage_metadata.prompt_token_count
    pieces = list(client.models.generate_content_stream(model="gemini-sim", contents=HELLO))
    assert "".join(p.text or "" for p in pieces) == answer.text
    assert pieces[-1].candidates[0].finish_reason == types.FinishReason.STOP  # type: ignore[index]
    client.close()


def test_boto3_bedrock_runtime(start_sim: Callable[..., Proc]) -> None:
    sim = start_sim("--format", "bedrock", "--api-key", "aws-secret")
    client = boto3.client("bedrock-runtime", region_name="us-east-1", endpoint_url=sim.url,
                          aws_access_key_id="AKIDTEST", aws_secret_access_key="aws-secret")
    model = "anthropic.claude-3-haiku-20240307-v1:0"
    messages = [{"role": "user", "content": [{"text": HELLO}]}]
    answer = client.converse(modelId=model, messages=messages)
    assert answer["stopReason"] == "end_turn" and answer["usage"]["totalTokens"] > 0
    events = list(client.converse_stream(modelId=model, messages=messages)["stream"])
    kinds = [next(iter(e)) for e in events]
    assert kinds[0] == "messageStart" and kinds[-2:] == ["messageStop", "metadata"]
    text = "".join(e["contentBlockDelta"]["delta"]["text"] for e in events
                   if "contentBlockDelta" in e)
    assert text == answer["output"]["message"]["content"][0]["text"]
    forged = boto3.client("bedrock-runtime", region_name="us-east-1", endpoint_url=sim.url,
                          aws_access_key_id="AKIDTEST", aws_secret_access_key="not-it")
    with pytest.raises(forged.exceptions.ClientError) as denied:
        forged.converse(modelId=model, messages=messages)
    assert denied.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    client.close()
    forged.close()


def test_ollama_client(start_sim: Callable[..., Proc]) -> None:
    sim = start_sim("--format", "ollama")
    client = ollama.Client(host=sim.url)
    answer = client.chat(model="llama3.2", messages=[{"role": "user", "content": HELLO}],
                         stream=False)
    assert answer.done_reason == "stop" and answer.prompt_eval_count and answer.eval_count
    streamed = list(client.chat(model="llama3.2", stream=True,
                                messages=[{"role": "user", "content": HELLO}]))
    assert "".join(p.message.content or "" for p in streamed) == answer.message.content
    assert streamed[-1].done and streamed[-1].eval_count == answer.eval_count
    client._client.close()  # the SDK keeps an httpx client and has no close() of its own


def test_fault_knobs_speak_the_format(start_sim: Callable[..., Proc]) -> None:
    sim = start_sim("--format", "anthropic", "--error-rate", "503=1")
    client = anthropic.Anthropic(base_url=sim.url, api_key="k", max_retries=0)
    with client, pytest.raises(anthropic.APIStatusError) as overloaded:
        client.messages.create(model="c", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    assert overloaded.value.status_code == 529
    assert overloaded.value.body["error"]["type"] == "overloaded_error"  # type: ignore[index]
    with urllib.request.urlopen(f"{sim.url}/_sim/stats") as response:
        assert json.loads(response.read())["messages:503"] == 1
