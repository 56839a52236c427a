"""power's own Hugging Face safetensors → GGUF converter (numpy + gguf, no torch).

Contract: `converter.convert_folder(src, dst)` writes a GGUF file llama.cpp loads (BERT, llama,
qwen2, gemma3) or raises `source.ConversionError`; `converter.quantize` runs llama.cpp's own
quantizer on a GGUF file. Both block on file I/O; the caller picks the thread.

Modules: `source` (reading a folder: config, safetensors, tokenizer files) → `vocab` (the
tokenizer as GGUF metadata) → `arch` (tensor names, shapes and hyper-parameters per
architecture) → `converter` (writing the file, tensor by tensor).

May import: nothing of power. `power.registry.create` calls it for `FROM <folder>` and
safetensors uploads; `scripts/models.py` for the test models.
"""
