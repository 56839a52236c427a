"""The HTTP API: Ollama's native routes, the OpenAI-compatible ones (chat, completions,
Responses) and Anthropic's Messages API, over shared jobs.

Layers inside, top down (arrows point down only):
- `server` (the model manager and the HTTP server in one nursery) → `connections` (hypercorn's
  HTTP/1.1 machinery with header/body timeouts, a connection cap and a lingering close) →
  `app` (`create_app`: guards, CORS, error bodies; registers the route modules) → `bodies`
  (request bodies that cannot fill the memory);
- one route module per API style: `routes_native` (/api/generate, /api/chat, /api/embed…),
  `routes_openai` (/v1/…, with `openai_compat` translating native chunks and `openai_schemas`
  parsing OpenAI bodies), `routes_responses` (/v1/responses: `responses_compat`,
  `responses_schemas`), `routes_anthropic` (/v1/messages: `anthropic_compat`,
  `anthropic_schemas`), `routes_models` (store and registry routes), `routes_misc`
  (/, version, health, metrics, usage). A new API style is one more such module; the
  translating ones answer through `answering.answer`;
- `jobs`: generate, chat and embed as every API style runs them, yielding native chunks;
- `running` (the one place that builds the engine's inputs: model resolution, options,
  `LoadSpec`, instance info, `GenerationParams`), `model_json` (the registry's typed results as
  Ollama's JSON), `schemas` (JSON bodies → typed requests, `RequestError`), `streaming`
  (NDJSON/SSE), `progress` (the pull/push/create status streams), `errors` (status and message
  of an error: no server paths, internal errors as an id), `state` (`ServerState`,
  `get_state`), `metrics`.

Contract: JSON is parsed here into typed objects and written here from typed objects; nothing
below `power.http` sees a request's raw dict. A client disconnect cancels the response body's
task, which releases the engine sequence.

May import: `power.engine`, `power.prompt`, `power.registry`, and the shared leaf modules
(`power.config`, `power.options`, `power.messages`, `power.durations`, `power.version`).
Never `power.cli`.
"""
