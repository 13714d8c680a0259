"""A tiny random Qwen2 causal LM with a Qwen-style tokenizer, built offline (no hub access).

``build_tiny_model()`` writes a normal Hugging Face model directory (``config.json``, ``model.safetensors``,
``generation_config.json``, ``tokenizer.json``, ``tokenizer_config.json``, chat template) that
``AutoModelForCausalLM.from_pretrained`` / ``AutoTokenizer.from_pretrained`` and verl load like any Qwen2
checkpoint. It stands in for a real model in CPU tests and the local demo.

The tokenizer is Qwen's scheme shrunk to its alphabet: byte-level BPE (every byte is a token, so any text
encodes, ``"\\n"`` is exactly one token) without merges, plus the special tokens ``<|endoftext|>`` (pad),
``<|im_start|>`` and ``<|im_end|>`` (eos), and Qwen2's ChatML template. Weights are deterministic for a given
seed. Directories are cached by settings; a build goes to a temporary directory renamed into place, so
concurrent builders never see a half-written model.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

RECIPE_VERSION = 1  # bump when the build below changes, to invalidate cached directories
MARKER = "maspo_tiny_model.json"
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
DEFAULT_VOCAB = 272  # 256 byte tokens + 3 special tokens, rounded up to a multiple of 16

# Qwen2's ChatML template, without the default system prompt (keeps prompts short on CPU).
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@contextlib.contextmanager
def quiet_transformers():
    """No progress bars and no advice from transformers while we build or save the cached models: the user
    sees our own progress line instead."""
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def cache_root() -> Path:
    return Path(os.environ.get("MASPO_CACHE") or Path.home() / ".cache" / "maspo")


def build_tiny_model(
    out_dir: Path | str | None = None,
    *,
    hidden: int = 64,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
    intermediate: int = 128,
    seed: int = 0,
    vocab: int = DEFAULT_VOCAB,
) -> Path:
    """Build (or reuse) the tiny model directory and return its path.

    ``vocab`` is the model's embedding size; it must cover the tokenizer's 259 tokens. Without ``out_dir``
    the model lands in ``$MASPO_CACHE`` (default ``~/.cache/maspo``) as ``tiny-qwen2-<hash of settings>``.
    An existing directory built with the same settings is returned as is.
    """
    settings = dict(recipe=RECIPE_VERSION, hidden=hidden, layers=layers, heads=heads, kv_heads=kv_heads,
                    intermediate=intermediate, seed=seed, vocab=vocab)
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    target = Path(out_dir) if out_dir is not None else cache_root() / f"tiny-qwen2-{digest}"
    if _built_with(target, settings):
        return target
    if target.exists() and any(target.iterdir()):
        raise FileExistsError(f"{target} exists and is not a tiny model built with {settings}")

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        _build(tmp, settings)
        if target.exists():  # an empty directory (or another builder's identical result)
            if _built_with(target, settings):
                return target
            target.rmdir()
        os.rename(tmp, target)
    except OSError:  # renaming onto a non-empty directory: fine if another builder won the race
        if not _built_with(target, settings):
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _built_with(path: Path, settings: dict) -> bool:
    try:
        return json.loads((path / MARKER).read_text()) == settings
    except (OSError, ValueError):
        return False


def build_tokenizer():
    """The byte-level tokenizer as a ``transformers`` fast tokenizer (not yet saved)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())  # the 256 byte symbols, e.g. "Ċ" = "\n"
    tok = Tokenizer(models.BPE(vocab={ch: i for i, ch in enumerate(alphabet)}, merges=[]))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        bos_token=None,
        chat_template=CHAT_TEMPLATE,
        padding_side="left",
        model_max_length=2048,
    )


def _build(path: Path, settings: dict) -> None:
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    tokenizer = build_tokenizer()
    if settings["vocab"] < len(tokenizer):
        raise ValueError(f"vocab={settings['vocab']} is smaller than the tokenizer ({len(tokenizer)} tokens)")
    eos, pad = tokenizer.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>"])
    config = Qwen2Config(
        vocab_size=settings["vocab"],
        hidden_size=settings["hidden"],
        intermediate_size=settings["intermediate"],
        num_hidden_layers=settings["layers"],
        num_attention_heads=settings["heads"],
        num_key_value_heads=settings["kv_heads"],
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=pad,
        eos_token_id=eos,
        pad_token_id=pad,
        use_sliding_window=False,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(settings["seed"])
        model = Qwen2ForCausalLM(config).to(torch.float32)
    model.generation_config = GenerationConfig(bos_token_id=pad, eos_token_id=[eos, pad], pad_token_id=pad)
    with quiet_transformers():
        model.save_pretrained(path)
        tokenizer.save_pretrained(path)
    (path / MARKER).write_text(json.dumps(settings, sort_keys=True))
