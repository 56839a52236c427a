"""Between a request and the engine: conversations become prompt text, model output becomes
thinking, content and tool calls.

Contract: `render` turns messages, tools and a template (Go TEMPLATE through
`power.gotemplate`, or the GGUF's Jinja chat template) into the prompt string exactly as Ollama
does; `model` applies Ollama's rules for a stored model (which template, SYSTEM, MESSAGEs,
special tokens); `images` marks where a conversation's images go (Ollama's `[img-N]` tags) and
cuts the rendered text there; `thinking` and `toolcalls` are streaming parsers of generated text (results
independent of how the text is split), chained by `output.OutputShaper`. Everything is pure and
synchronous; template errors propagate for the caller to report.

May import: `power.gotemplate`, `power.registry` (the typed `ResolvedModel` and GGUF header it
renders for), `power.messages`. Never `power.http`, `power.cli` or `power.engine` (tokenizing
is the caller's step), so that every API style (`power.http`'s native and OpenAI modules, and
any added later) shares one prompt and one output parser.
"""
