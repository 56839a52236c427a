"""power: a local LLM server and CLI, a drop-in replacement for Ollama.

- `power.engine.load(path, options)`: the in-process engine; `model.generate(...)` streams chunks.
- `power.Client` / `power.AsyncClient`: HTTP clients of a running `power serve`.
"""

from power.version import __version__


def __getattr__(name: str):  # lazy: `import power` stays cheap and free of httpx
    if name in ("Client", "AsyncClient", "ResponseError"):
        from power import client

        return getattr(client, name)
    raise AttributeError(name)


__all__ = ["AsyncClient", "Client", "ResponseError", "__version__"]
