"""power: a local LLM server and CLI, a drop-in replacement for Ollama."""

__version__ = "0.1.0"
