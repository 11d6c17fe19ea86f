"""The commented starter `shipyard.yaml` written by `shipyard init`."""

from __future__ import annotations

__all__ = ["STARTER_CONFIG"]

STARTER_CONFIG = """\
# shipyard.yaml — see docs/configuration.md for every setting, its default and its meaning.
# Validate with:  shipyard config check --config shipyard.yaml
version: 1

server:
  host: 127.0.0.1
  port: 8000
  # max_body_bytes: 1048576     # larger request bodies get 413

store:
  # SQLite (WAL) by default; for PostgreSQL: postgresql+psycopg://user@host:5432/shipyard
  url: sqlite:///.shipyard/shipyard.db

traces:
  enabled: true                 # one trace per request, written off the hot path

auth:
  api_keys:
    # Callers send 'Authorization: Bearer <key>'. Reference secrets, never inline them:
    - {$env: SHIPYARD_API_KEY}

providers:
  # An OpenAI-compatible upstream: OpenAI, Azure OpenAI, vLLM, Ollama, llama.cpp, ...
  local-sim:
    kind: openai
    base_url: http://127.0.0.1:9100/v1    # start it with: shipyard sim --port 9100
    # api_key: {$env: OPENAI_API_KEY}
  # A Python function as the model (sync or async):
  # my-model:
  #   kind: python
  #   function: my_package.model:answer

models:
  # Clients call these aliases; 'model' is the name sent upstream.
  demo:
    provider: local-sim
    model: sim-chat
    capture: metadata           # none | metadata | full
  demo-embed:
    provider: local-sim
    model: sim-embed
    type: embedding

services: {}
  # classify:
  #   function: my_package.service:classify
  #   input_schema:
  #     type: object
  #     required: [text]
  #     properties: {text: {type: string}}
"""
