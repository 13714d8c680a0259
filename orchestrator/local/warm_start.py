"""Warm start: a short supervised pass so the tiny model starts RL with some correct samples per group.

RLVR learns nothing from a group whose rewards are all equal (GRPO advantages are zero), so a random model
never starts. This module fine-tunes the tiny model on the synthetic task family's training distribution
(prompt -> ``\\boxed{answer}<|im_end|>``, loss on the response only) and stops as soon as its sampled accuracy
(temperature 1.0, as RL samples) reaches ``target_accuracy``, leaving room for RL to improve it.
The result is a normal Hugging Face model directory, cached by a hash of its settings like the base model.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from orchestrator.local import tasks
from orchestrator.local.tiny_model import build_tiny_model, cache_root, quiet_transformers

RECIPE_VERSION = 2  # 2: worked solutions (tasks recipe 3)
MARKER = "maspo_warm_start.json"


@dataclass(frozen=True)
class WarmStartSettings:
    hidden: int = 64
    layers: int = 2
    heads: int = 4
    kv_heads: int = 2
    intermediate: int = 128
    model_seed: int = 0
    data_seed: int = 0
    lr: float = 3e-3
    batch_size: int = 64
    max_steps: int = 1500
    eval_every: int = 100
    eval_problems: int = 192
    target_accuracy: float = 0.35
    clip_grad: float = 1.0


def warm_start_model(settings: WarmStartSettings = WarmStartSettings(), out_dir: Path | None = None,
                     progress=None) -> Path:
    """Return the directory of the warm-started model, building it on first use."""
    key = dict(recipe=RECIPE_VERSION, **asdict(settings))
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    target = Path(out_dir) if out_dir is not None else cache_root() / f"warm-qwen2-{digest}"
    if _marker(target).get("settings") == key:
        return target
    base = build_tiny_model(hidden=settings.hidden, layers=settings.layers, heads=settings.heads,
                            kv_heads=settings.kv_heads, intermediate=settings.intermediate, seed=settings.model_seed)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        history = _train(base, tmp, settings, progress)
        (tmp / MARKER).write_text(json.dumps({"settings": key, "history": history}, indent=1))
        if target.exists():
            shutil.rmtree(target)
        os.rename(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def warm_start_report(model_dir: Path) -> dict:
    """The settings and accuracy history a warm-started directory was built with."""
    return _marker(Path(model_dir))


def _marker(path: Path) -> dict:
    try:
        return json.loads((path / MARKER).read_text())
    except (OSError, ValueError):
        return {}


def _encode(tokenizer, question: str) -> list[int]:
    return tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                         tokenize=True, return_dict=False)


def _examples(tokenizer, problems):
    out = []
    for p in problems:
        prompt = _encode(tokenizer, p.question)
        response = tokenizer.encode(p.solution, add_special_tokens=False) + [tokenizer.eos_token_id]
        out.append((prompt, response))
    return out


def _batch(examples, pad_id):
    import torch

    length = max(len(p) + len(r) for p, r in examples)
    ids = torch.full((len(examples), length), pad_id, dtype=torch.long)
    labels = torch.full_like(ids, -100)
    attention = torch.zeros_like(ids)
    for i, (p, r) in enumerate(examples):
        seq = p + r
        ids[i, : len(seq)] = torch.tensor(seq)
        labels[i, len(p): len(seq)] = torch.tensor(r)
        attention[i, : len(seq)] = 1
    return ids, labels, attention


def sampled_accuracy(model, tokenizer, problems, temperature: float = 1.0, seed: int = 0,
                     max_new_tokens: int = 48) -> float:
    """Fraction of problems whose sampled response the shared reward function scores +1."""
    import torch

    from orchestrator.rewards import compute_score

    prompts = [_encode(tokenizer, p.question) for p in problems]
    width = max(map(len, prompts))
    pad = tokenizer.pad_token_id
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    attention = (torch.arange(width)[None, :] >= torch.tensor([width - len(p) for p in prompts])[:, None]).long()
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=attention, do_sample=temperature > 0,
                             temperature=temperature if temperature > 0 else None, top_p=1.0, top_k=0,
                             max_new_tokens=max_new_tokens, pad_token_id=pad, eos_token_id=tokenizer.eos_token_id)
    torch.random.set_rng_state(generator_state)
    texts = tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)
    scores = [compute_score("", t, str(p.answer), {"split": "train"})["acc"] for t, p in zip(texts, problems)]
    return sum(scores) / len(scores)


def _train(base: Path, out: Path, s: WarmStartSettings, progress) -> list[dict]:
    import random

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(s.data_seed)
    tokenizer = AutoTokenizer.from_pretrained(base)
    with quiet_transformers():
        model = AutoModelForCausalLM.from_pretrained(base, attn_implementation="sdpa", dtype=torch.float32)
    train = tasks.sample_problems(4000, (1, 2, 3, 4, 5, 6), seed=s.data_seed + 7)
    evaluation = [p for level in range(1, 7)
                  for p in tasks.make_problems(s.eval_problems // 6, level, seed=s.data_seed + 13)]
    examples = _examples(tokenizer, train)
    rng = random.Random(s.data_seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=s.lr, weight_decay=0.0)
    history = []
    for step in range(1, s.max_steps + 1):
        model.train()
        ids, labels, attention = _batch(rng.sample(examples, s.batch_size), tokenizer.pad_token_id)
        loss = model(input_ids=ids, attention_mask=attention, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), s.clip_grad)
        optimizer.step()
        if step % s.eval_every == 0 or step == s.max_steps:
            model.eval()
            accuracy = sampled_accuracy(model, tokenizer, evaluation)
            history.append({"step": step, "loss": round(loss.item(), 4), "sampled_accuracy": accuracy})
            if progress is not None:
                progress(step, s.max_steps, accuracy)
            if accuracy >= s.target_accuracy:
                break
    with quiet_transformers():
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
    return history
