"""`make serve`'s demo import (scripts/demo.py): qwen2.5-coder:0.5b chats with the GGUF's own
chat template, gemma3:270m completes, both served by a real `power serve`."""

from __future__ import annotations

import sys
from pathlib import Path

import ollama
import pytest

from conftest import ROOT, run_power_server
from power.registry import models
from power.registry.store import Store

sys.path.insert(0, str(ROOT / "scripts"))

import demo  # noqa: E402  (scripts/demo.py)

pytestmark = pytest.mark.slow


def test_demo_import_chats_and_completes(tmp_path: Path, gemma_gguf: Path, qwen_gguf: Path):
    store = Store(tmp_path / "models")
    assert demo.import_demo_models(store) == [demo.QWEN, demo.GEMMA]
    assert demo.import_demo_models(store) == []  # a second run leaves them alone

    qwen = models.resolve(store, demo.QWEN)
    assert qwen.template is None and qwen.chat_template  # the GGUF's Jinja template
    assert "tools" in qwen.capabilities
    if qwen.model_path.stat().st_dev == qwen_gguf.stat().st_dev:  # linked, not copied
        assert qwen.model_path.stat().st_ino == qwen_gguf.stat().st_ino
    gemma = models.resolve(store, demo.GEMMA)
    assert gemma.template == demo.GEMMA_TEMPLATE and gemma.params["stop"] == ["<end_of_turn>"]

    with run_power_server(store.root) as url:
        client = ollama.Client(host=url)
        answer = client.chat(
            demo.QWEN,
            messages=[{"role": "user", "content": "What is the capital of France?"}],
            options={"temperature": 0, "num_predict": 32},
        )
        assert "Paris" in answer.message.content
        assert answer.done_reason == "stop"  # ended at its end-of-turn token
        completion = client.generate(
            demo.GEMMA, "The capital of France is", raw=True, options={"num_predict": 4}
        )
        assert completion.done and completion.eval_count == 4
