"""Wire formats of the upstreams Shipyard translates to and from OpenAI's chat format.

One module per format, each translating both ways so the same code serves a provider
(OpenAI request → native request, native response and stream → OpenAI) and the reverse
(native request → OpenAI request, OpenAI response and chunks → native), which the format
simulators (`shipyard sim --format`) and an Anthropic-format front door use:

- `anthropic`: the Messages API (`POST /v1/messages`, SSE events);
- `gemini`: the Generative Language API (`generateContent`, `streamGenerateContent?alt=sse`);
- `bedrock`: the Bedrock Converse API (`converse`, `converse-stream` in AWS event streams);
- `ollama`: Ollama's native chat API (`POST /api/chat`, NDJSON stream).

`openai` holds what they share: OpenAI chunk building, SSE and NDJSON framing, message
parts, tool-call and JSON-output helpers. Nothing here does I/O.
"""
