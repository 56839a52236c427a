"""Option parsing and range checks (power.options) and the load parameters derived from them
(power.engine.loadspec): no request value may reach a llama.cpp assertion."""

from __future__ import annotations

import json
import logging
import math

import gguf
import pytest

from power.engine.loadspec import (
    MAX_SEQ,
    MAX_UBATCH,
    MIN_NUM_CTX,
    LoadSpec,
    context_plan,
    gguf_context_length,
    max_threads,
)
from power.engine.manager import estimate_bytes
from power.options import (
    OPTION_TYPES,
    RULES,
    OptionError,
    Options,
    coerce_option,
    parse_options,
)

FLOAT_OPTIONS = [name for name, kind in OPTION_TYPES.items() if kind is float]


@pytest.mark.parametrize("name", FLOAT_OPTIONS)
@pytest.mark.parametrize("text", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_numbers_are_refused_naming_the_option(name, text):
    body = json.loads(f'{{"{name}": {text}}}')  # Python's json accepts them
    with pytest.raises(OptionError, match=name):
        parse_options(body)
    with pytest.raises(OptionError, match=name):
        coerce_option(name, text.lower())  # Modelfile text


@pytest.mark.parametrize(
    "name, value",
    [
        ("top_p", 7),
        ("top_p", -0.1),
        ("min_p", 1.5),
        ("typical_p", -1),
        ("mirostat", 9),
        ("mirostat", -1),
        ("mirostat_tau", -1),
        ("repeat_penalty", -1),
        ("repeat_penalty", 1e9),
        ("frequency_penalty", -1e308),
        ("presence_penalty", 1000),
        ("repeat_last_n", -2),
        ("num_predict", -3),
        ("num_keep", -2),
        ("num_ctx", -1),
        ("num_batch", 0),
        ("num_batch", -1),
        ("num_thread", -1),
        ("num_thread_batch", -4),
        ("num_gpu", -2),
        ("main_gpu", -1),
        ("seed", 2**64),
        ("num_ctx", 1e300),
        ("num_ctx", "1e400"),
    ],
)
def test_out_of_range_values_are_refused_with_the_option_named(name, value):
    with pytest.raises(OptionError, match=f"'{name}'"):
        parse_options({name: value})


@pytest.mark.parametrize(
    "name, value",
    [
        ("top_k", -3),  # <= 0 turns top_k off
        ("top_k", 0),
        ("temperature", -1.0),  # <= 0 is greedy
        ("temperature", 0.0),
        ("num_predict", -1),  # unbounded
        ("num_predict", -2),  # fill the context
        ("repeat_last_n", -1),  # num_ctx
        ("repeat_last_n", 0),  # off
        ("seed", -1),  # random
        ("mirostat", 2),
        ("num_gpu", -1),  # every layer
        ("num_thread", 0),  # the default
        ("num_ctx", 0),  # raised to MIN_NUM_CTX at load
        ("num_batch", 1),  # raised to num_parallel at load
        ("num_thread", 4096),  # clamped to 4x the cores at load
        ("tfs_z", 2.0),  # >= 1 is off (Ollama's docs show 2.0)
        ("repeat_penalty", 1e-45),  # extreme but finite: the sampler copes
        ("presence_penalty", -100),
        ("num_keep", -1),
        ("seed", 2**63 - 1),
    ],
)
def test_values_with_a_meaning_are_kept(name, value):
    assert parse_options({name: value}) == {name: value}


def test_every_numeric_option_has_a_rule():
    numeric = {n for n, t in OPTION_TYPES.items() if t in (int, float)}
    assert set(RULES) == numeric


def test_one_parser_for_requests_and_updates():
    body = {"temperature": "0.5", "num_ctx": 2048.0, "stop": "x", "bogus": 1, "top_k": None}
    parsed = parse_options(body)
    assert parsed == {"temperature": 0.5, "num_ctx": 2048, "stop": ["x"]}
    updated = Options().updated(body)
    assert (updated.temperature, updated.num_ctx, updated.stop) == (0.5, 2048, ["x"])
    with pytest.raises(OptionError, match="top_p"):
        Options().updated({"top_p": float("nan")})
    with pytest.raises(OptionError, match="options must be an object"):
        parse_options([1])


def test_modelfile_text_keeps_its_old_coercions():
    assert coerce_option("num_ctx", "2048") == 2048
    assert coerce_option("num_ctx", "2048.0") == 2048
    assert coerce_option("use_mmap", "false") is False
    with pytest.raises(OptionError, match="must be of type int"):
        coerce_option("num_ctx", "big")


def test_check_catches_a_bad_option_built_directly():
    assert Options().check() is not None
    with pytest.raises(OptionError, match="mirostat"):
        Options(mirostat=7).check()
    with pytest.raises(OptionError, match="temperature"):
        Options(temperature=math.nan).check()


# ---------------------------------------------------------------- load parameters


def plan(*, embedding=False, n_ctx_train=32768, num_parallel=4, **options):
    base = dict(num_ctx=4096, num_batch=512, num_thread=0, num_thread_batch=0)
    base.update(options)
    spec = LoadSpec(model_path="/nonexistent.gguf", num_parallel=num_parallel, **base)
    return context_plan(spec, n_ctx_train=n_ctx_train, embedding=embedding)


@pytest.mark.parametrize("num_batch", [1, 2, 3])
def test_num_batch_below_the_parallel_sequences_is_raised(num_batch, caplog):
    with caplog.at_level(logging.WARNING):
        result = plan(num_batch=num_batch, num_parallel=4)
    assert result.n_batch == 4 and result.n_ubatch == 4
    assert "below the 4 parallel sequences" in caplog.text


def test_the_micro_batch_stays_small_and_the_batch_within_the_context():
    big = plan(num_batch=10**6, num_ctx=1024, num_parallel=2)
    assert big.n_batch == 2048 and big.n_ubatch == MAX_UBATCH
    embedding = plan(num_batch=64, num_ctx=512, n_ctx_train=512, embedding=True)
    assert embedding.n_batch == embedding.n_ubatch == 512  # a whole input in one micro-batch


def test_num_ctx_is_clamped_between_the_minimum_and_the_trained_context(caplog):
    assert plan(num_ctx=0).n_ctx_seq == MIN_NUM_CTX
    assert plan(num_ctx=1).n_ctx_seq == MIN_NUM_CTX
    with caplog.at_level(logging.WARNING):
        assert plan(num_ctx=10**9, n_ctx_train=32768).n_ctx_seq == 32768
    assert "too large for model" in caplog.text
    assert plan(num_ctx=10**9, n_ctx_train=0).n_ctx_seq == 131_072
    assert plan(num_ctx=10**9, num_parallel=10**6).n_ctx_seq * MAX_SEQ < 2**32
    with pytest.raises(OptionError, match="num_ctx"):
        plan(num_ctx=-5)


def test_threads_are_clamped_and_zero_is_the_default():
    result = plan(num_thread=4096, num_thread_batch=0)
    assert result.n_threads == max_threads() and result.n_threads_batch == max_threads()
    default = plan(num_thread=0, num_thread_batch=0)
    assert default.n_threads >= 1 and default.n_threads_batch == default.n_threads
    with pytest.raises(OptionError, match="num_thread"):
        plan(num_thread=-1)


def test_num_parallel_is_clamped_to_llama_cpps_maximum():
    assert plan(num_parallel=1000).n_seq_max == MAX_SEQ
    assert plan(num_parallel=0).n_seq_max == 1


def test_a_negative_num_batch_is_refused_at_load_too():
    with pytest.raises(OptionError, match="num_batch"):
        plan(num_batch=-1)
    with pytest.raises(OptionError, match="num_batch"):
        LoadSpec.from_options("/x.gguf", Options(num_batch=-1))


@pytest.fixture
def tiny_gguf(tmp_path):
    path = tmp_path / "tiny.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(2048)
    writer.add_block_count(1)
    writer.add_token_list(["a", "b"])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_the_trained_context_comes_from_the_gguf_header(tiny_gguf, tmp_path):
    assert gguf_context_length(tiny_gguf) == 2048
    assert gguf_context_length(tmp_path / "missing.gguf") == 0
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"GGUF" + b"\xff" * 40)
    assert gguf_context_length(junk) == 0


def test_from_options_normalises_the_spec(tiny_gguf):
    options = Options(num_ctx=10**9, num_batch=1, num_thread=4096)
    spec = LoadSpec.from_options(tiny_gguf, options, num_parallel=4)
    assert spec.num_ctx == 2048 and spec.num_batch == 4 and spec.num_thread == max_threads()
    # the reload key of two requests that load the same thing is the same
    assert LoadSpec.from_options(tiny_gguf, Options(num_ctx=10**8, num_batch=2)) == (
        LoadSpec.from_options(tiny_gguf, Options(num_ctx=2048, num_batch=4))
    )
    assert LoadSpec.from_options(tiny_gguf, Options(num_ctx=0)).num_ctx == MIN_NUM_CTX


def test_the_memory_estimate_counts_the_context_that_will_be_loaded(tiny_gguf):
    huge = LoadSpec(model_path=str(tiny_gguf), num_ctx=10**9)
    trained = LoadSpec(model_path=str(tiny_gguf), num_ctx=2048)
    assert estimate_bytes(huge) == estimate_bytes(trained) < 2**30


OLLAMA_ALL_OPTIONS_EXAMPLE = {  # Ollama's docs/api.md "Generate request (With options)"
    "num_keep": 5,
    "seed": 42,
    "num_predict": 100,
    "top_k": 20,
    "top_p": 0.9,
    "min_p": 0.0,
    "tfs_z": 0.5,
    "typical_p": 0.7,
    "repeat_last_n": 33,
    "temperature": 0.8,
    "repeat_penalty": 1.2,
    "presence_penalty": 1.5,
    "frequency_penalty": 1.0,
    "mirostat": 1,
    "mirostat_tau": 0.8,
    "mirostat_eta": 0.6,
    "penalize_newline": True,
    "stop": ["\n", "user:"],
    "numa": False,
    "num_ctx": 1024,
    "num_batch": 2,
    "num_gpu": 1,
    "main_gpu": 0,
    "low_vram": False,  # older keys, ignored
    "vocab_only": False,
    "num_gqa": 1,
    "rope_frequency_base": 1.1,
    "use_mmap": True,
    "use_mlock": False,
    "num_thread": 8,
}


def test_ollamas_all_options_example_is_accepted_and_loads_safely(tiny_gguf):
    options = Options().updated(OLLAMA_ALL_OPTIONS_EXAMPLE)
    spec = LoadSpec.from_options(tiny_gguf, options, num_parallel=4)
    assert spec.num_batch == 4  # num_batch 2 under 4 parallel sequences aborted llama.cpp
    assert spec.num_ctx == 1024 and spec.num_gpu == 1


def test_an_option_error_is_a_400_engine_error_and_a_value_error():
    from power.engine.errors import EngineError

    with pytest.raises(OptionError) as info:
        parse_options({"seed": 2**63})  # OpenAI's top-level seed reaches parse_options too
    assert isinstance(info.value, EngineError) and isinstance(info.value, ValueError)
    assert info.value.status == 400 and "'seed'" in str(info.value)
