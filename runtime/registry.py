"""The model registry: model names to local directories of weights on this node.

A model is a directory in the Hugging Face layout (``config.json``, safetensors
weights, ``tokenizer.json``, ``tokenizer_config.json`` with its chat template) under
``TANDEM_MODEL_DIR`` (default ``<var>/models``), named by its path below it:
``$TANDEM_MODEL_DIR/meta-llama/Llama-3.2-1B`` is ``meta-llama/Llama-3.2-1B``. Nothing
is ever downloaded: a name with no directory is an error, and the runtime sets
``HF_HUB_OFFLINE=1`` before transformers is imported.

``tandem/tiny-llama`` is built in: a small Llama-shaped model (about 0.9M
parameters) with a byte-level BPE tokenizer trained in-process on a small built-in
corpus, created on first use under the var dir and reused after. It is
deterministic: the same bytes on every machine, so tests and the demo fine-tune
for real on a CPU in seconds.

Parameter counts come from the safetensors headers and context length from
``config.json``: neither needs torch, so the web tier can price a job with them.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import struct
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from core.errors import InvalidInput

TINY_MODEL = "tandem/tiny-llama"
# Bumped when the built-in model's recipe changes, so an old cached copy is rebuilt.
TINY_MODEL_REVISION = "4"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


class UnknownModel(InvalidInput):
    code = "unknown_model"


@dataclass(frozen=True, slots=True)
class ModelInfo:
    name: str
    path: Path
    parameters: int
    context_length: int
    architecture: str
    vocab_size: int

    @property
    def size_tier(self) -> str:
        """The price book's tier by parameter count."""
        billions = self.parameters / 1e9
        if billions <= 4:
            return "up-to-4b"
        if billions <= 16:
            return "4b-16b"
        if billions <= 70:
            return "16b-70b"
        return "over-70b"


def _location(setting: str, env: str, default: Callable[[], Path]) -> Path:
    """A directory from Django's settings when they are configured (config/settings.py
    declares each one, read from ``env`` there), else from ``env`` itself: a node's
    ``torchrun`` processes may run without Django."""
    from django.conf import settings

    if settings.configured:
        return Path(getattr(settings, setting))
    value = os.environ.get(env)
    return Path(value) if value else default()


def var_dir() -> Path:
    return _location(
        "VAR_DIR", "TANDEM_VAR_DIR", lambda: Path(__file__).resolve().parent.parent / "var"
    )


def model_dir() -> Path:
    return _location("RUNTIME_MODEL_DIR", "TANDEM_MODEL_DIR", lambda: var_dir() / "models")


def artifact_dir() -> Path:
    return _location("RUNTIME_ARTIFACT_DIR", "TANDEM_ARTIFACT_DIR", lambda: var_dir() / "artifacts")


def _check_name(name: str) -> None:
    parts = name.split("/")
    if (
        not name
        or len(name) > 200
        or any(part in {"", ".", ".."} for part in parts)
        or not all(c.isalnum() or c in "-_./" for c in name)
    ):
        raise UnknownModel(f"model: {name!r} is not a model name", details={"field": "model"})


def model_path(name: str) -> Path:
    """The directory of ``name``, building the tiny model on first use."""
    _check_name(name)
    if name == TINY_MODEL:
        return tiny_model_ensure()
    path = model_dir() / name
    if not (path / "config.json").is_file():
        raise UnknownModel(
            f"model: {name!r} is not on this node (no {path}/config.json)",
            details={"field": "model", "model": name},
        )
    return path


def model_info(name: str) -> ModelInfo:
    path = model_path(name)
    return _info(name, str(path), _mtime(path))


def _mtime(path: Path) -> float:
    return (path / "config.json").stat().st_mtime


@lru_cache(maxsize=64)
def _info(name: str, path: str, mtime: float) -> ModelInfo:
    config = json.loads((Path(path) / "config.json").read_text())
    context = int(
        config.get("max_position_embeddings")
        or config.get("n_positions")
        or config.get("max_sequence_length")
        or 2048
    )
    return ModelInfo(
        name=name,
        path=Path(path),
        parameters=safetensors_parameters(Path(path)),
        context_length=context,
        architecture=(config.get("architectures") or ["unknown"])[0],
        vocab_size=int(config.get("vocab_size", 0)),
    )


def models_list() -> list[ModelInfo]:
    """Every model on this node: the built-in one and each directory with a config."""
    found = [model_info(TINY_MODEL)]
    root = model_dir()
    if root.is_dir():
        for config in sorted(root.glob("*/*/config.json")) + sorted(root.glob("*/config.json")):
            name = config.parent.relative_to(root).as_posix()
            if name != TINY_MODEL and not name.startswith("."):
                try:
                    found.append(model_info(name))
                except (InvalidInput, OSError, ValueError):
                    continue  # a half-copied directory is not a model yet
    return found


def safetensors_parameters(path: Path) -> int:
    """The number of parameters in a directory's ``*.safetensors`` files, read from
    their headers (8 bytes of length, then JSON naming each tensor's shape)."""
    total = 0
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise UnknownModel(
            f"model at {path} has no safetensors weights", details={"field": "model"}
        )
    for file in files:
        with file.open("rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            header = json.loads(handle.read(length))
        for key, tensor in header.items():
            if key == "__metadata__":
                continue
            count = 1
            for dim in tensor["shape"]:
                count *= int(dim)
            total += count
    return total


# --- the built-in tiny model ---------------------------------------------------

SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
# Tools as the Hugging Face convention passes them (a ``tools`` list of
# ``{"type": "function", "function": {...}}``; assistant ``tool_calls`` with
# ``arguments`` as objects; ``tool`` messages): the definitions in a system turn first,
# a call as the JSON object the constrained decoder writes, several calls as a JSON
# list of them (revision 4). Without tools the text is what revision 2 rendered.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% if tools %}<|system|>\nFunctions you may call, answering with "
    '{"name": ..., "arguments": {...}}:\n'
    "{% for tool in tools %}{{ tool | tojson }}\n{% endfor %}<|end|>\n{% endif %}"
    "{% for message in messages %}"
    "<|{{ message['role'] }}|>\n"
    "{% if message.get('tool_calls') %}"
    "{% if message['tool_calls'] | length > 1 %}[{% endif %}"
    "{% for call in message['tool_calls'] %}{% if not loop.first %}, {% endif %}"
    '{"name": {{ call.function.name | tojson }}, "arguments": '
    "{{ call.function.arguments | tojson }}}{% endfor %}"
    "{% if message['tool_calls'] | length > 1 %}]{% endif %}"
    "{% else %}{{ message['content'] }}{% endif %}<|end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
TINY_CONFIG: dict[str, Any] = {
    "vocab_size": 512,
    "hidden_size": 128,
    "intermediate_size": 344,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 512,
    "rms_norm_eps": 1e-5,
    "tie_word_embeddings": True,
    "initializer_range": 0.02,
}

# The tokenizer's training text: plain English of the kind the sample datasets hold,
# so common words become single tokens and examples stay short.
CORPUS = """\
The quick brown fox jumps over the lazy dog. A marketplace matches buyers and providers.
Providers list spare GPU capacity; buyers fine-tune and serve open models on it.
Every token and every GPU-second is metered, rated and posted to a double-entry ledger.
What is the capital of France? The capital of France is Paris.
What is the capital of Italy? The capital of Italy is Rome.
What is the capital of Spain? The capital of Spain is Madrid.
What is the capital of Germany? The capital of Germany is Berlin.
Translate to French: good morning. Bonjour. Translate to French: thank you. Merci.
Add two numbers: 2 + 3 = 5. 4 + 4 = 8. 7 + 1 = 8. 10 + 5 = 15. 12 + 30 = 42.
You are a helpful assistant. Answer briefly and politely. Hello! How can I help you today?
Please summarise the following text in one sentence. The summary is short and clear.
The weather today is sunny with a light breeze; tomorrow it will rain in the evening.
Training a language model lowers its loss on the data it sees, one step at a time.
A checkpoint saves the weights, the optimizer and the data position so a job can resume.
Inference turns a prompt into a completion, token by token, until a stop sequence.
{"text": "json lines"} {"messages": [{"role": "user", "content": "hi"}]}
0 1 2 3 4 5 6 7 8 9 10 100 1000 one two three four five six seven eight nine ten
"""


def _build_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE(unk_token=None, byte_fallback=False))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TINY_CONFIG["vocab_size"],
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
        min_frequency=2,
    )
    # Repeated so pair counts are stable and every merge up to the vocabulary fills.
    tokenizer.train_from_iterator([line for line in CORPUS.splitlines() * 4], trainer=trainer)
    return tokenizer


def _write_tiny_model(target: Path) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = _build_tokenizer()
    vocab = tokenizer.get_vocab()
    tokenizer.save(str(target / "tokenizer.json"))
    pad, bos, eos, end = (vocab[t] for t in ("<pad>", "<s>", "</s>", "<|end|>"))
    (target / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "PreTrainedTokenizerFast",
                "bos_token": "<s>",
                "eos_token": "</s>",
                "pad_token": "<pad>",
                "model_max_length": TINY_CONFIG["max_position_embeddings"],
                "chat_template": CHAT_TEMPLATE,
                "clean_up_tokenization_spaces": False,
            },
            indent=2,
        )
    )
    config = LlamaConfig(
        **{**TINY_CONFIG, "vocab_size": tokenizer.get_vocab_size()},
        bos_token_id=bos,
        eos_token_id=eos,
        pad_token_id=pad,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1234)
        model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = [eos, end]
    model.generation_config.pad_token_id = pad
    model.generation_config.bos_token_id = bos
    model.save_pretrained(str(target), safe_serialization=True)
    (target / "TANDEM_REVISION").write_text(TINY_MODEL_REVISION)


def tiny_model_ensure() -> Path:
    """The built-in model's directory, built once (under a file lock, so concurrent
    processes wait for one builder) and reused after."""
    target = model_dir() / TINY_MODEL
    marker = target / "TANDEM_REVISION"
    if marker.is_file() and marker.read_text() == TINY_MODEL_REVISION:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with (target.parent / ".tiny-llama.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if marker.is_file() and marker.read_text() == TINY_MODEL_REVISION:
            return target
        building = Path(tempfile.mkdtemp(prefix=".tiny-llama-", dir=target.parent))
        try:
            _write_tiny_model(building)
            if target.exists():
                shutil.rmtree(target)
            building.rename(target)
        finally:
            if building.exists():
                shutil.rmtree(building, ignore_errors=True)
    return target
