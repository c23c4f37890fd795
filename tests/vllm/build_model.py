"""Build a tiny random-weight Llama, its tokenizer and a LoRA adapter locally, for real vLLM
on the CPU.

    <vllm-venv>/bin/python tests/vllm/build_model.py DIR

Runs inside the vLLM venv (it needs torch, transformers and tokenizers, which the project
venv does not have). Nothing is downloaded: the tokenizer is a byte-level BPE trained here
on generated text, the weights are random. Cached: DIR is rebuilt only when its marker
file was written by another recipe (RECIPE: a hash of this file), so a machine that kept
an older model rebuilds it.

The tokenizer is deliberately unlike "one word, one token": no token is longer than
MAX_TOKEN_CHARS characters, so "hello" is 3 tokens (" hello" too) and ordinary English
text is about 3 tokens a word, while "a", "the", "to" stay one token. A client that sizes
prompts in words overshoots by that factor; the tests must size them with the server's
POST /tokenize.

The shape is the smallest that vLLM 0.32's CPU backend serves: head_dim 32 (hidden 64,
2 heads); head_dim 16 passes /health and then kills the engine on the first request.
DIR/lora is a rank-8 LoRA adapter for it (adapter_config.json + adapter_model.safetensors,
the files PEFT writes), served with `--enable-lora --lora-modules NAME=DIR/lora`.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import sys
import time
from pathlib import Path

VOCAB = 2000  # a ceiling: with MAX_TOKEN_CHARS = 4 the trainer stops near 1,900
MAX_TOKEN_CHARS = 4  # no merge longer than this (byte-level: " hello" is "Ġhello", 6)
MAX_LEN = 1024
MARKER = "warmgw-tiny.json"  # written last: its presence means the directory is complete
LORA_DIR = "lora"
LORA_RANK = 8
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")
SPECIALS = ["<unk>", "<s>", "</s>", "<pad>"]
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% if tools %}<|system|>\nTools: {{ tools | tojson }}\n{% endif %}"
    "{% for m in messages %}"
    "<|{{ m['role'] }}|>\n{{ m['content'] if m['content'] is string else '' }}\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
SPEC = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 2,
    "max_position_embeddings": MAX_LEN,
    "seed": 1234,
}
# Held out from training: what "ordinary English" costs in tokens (checked at build time).
ENGLISH = (
    "Please summarize the following document in three sentences and keep the important "
    "numbers. Yesterday the committee decided to postpone the meeting until next week "
    "because several members were travelling. Could you tell me a story about a dragon "
    "who wanted to learn how to cook?"
)
MIN_HELLO_TOKENS = 2
MIN_ENGLISH_TOKENS_PER_WORD = 1.5


def recipe() -> str:
    """What the cached model was built by: this file's own hash."""
    return hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16]


def is_current(out: Path) -> bool:
    """DIR holds a complete model built by this very recipe."""
    try:
        info = json.loads((out / MARKER).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(info, dict) and info.get("recipe") == recipe()


def corpus(n_lines: int, seed: int) -> list[str]:
    """Generated pseudo-text: syllable words, plus the words the tests and warmup send."""
    rng = random.Random(seed)
    onsets = ["", "b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "st"]
    vowels = ["a", "e", "i", "o", "u", "ai", "ou"]
    codas = ["", "", "n", "s", "r", "l", "m"]
    words = [
        "".join(rng.choice(onsets) + rng.choice(vowels) + rng.choice(codas)
                for _ in range(rng.randint(1, 3)))
        for _ in range(4000)
    ]
    common = ("hello world the a to of and is in it you that say something nice hi there "
              "user assistant system count from one two three tell me a story about").split()
    lines = []
    for _ in range(n_lines):
        k = rng.randint(4, 16)
        ws = [rng.choice(common) if rng.random() < 0.3 else rng.choice(words) for _ in range(k)]
        lines.append(" ".join(ws).capitalize() + rng.choice([".", "!", "?", ","]))
    return lines


def tokenizer_stats(tok) -> dict[str, float]:  # type: ignore[no-untyped-def]
    def count(text: str) -> int:
        return len(tok(text, add_special_tokens=False)["input_ids"])

    return {
        "hello_tokens": count("hello"),
        "space_hello_tokens": count(" hello"),
        "english_tokens_per_word": round(count(ENGLISH) / len(ENGLISH.split()), 2),
    }


def build_tokenizer(out: Path):  # type: ignore[no-untyped-def]
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB,
        max_token_length=MAX_TOKEN_CHARS,
        special_tokens=[*SPECIALS, "<|user|>", "<|assistant|>", "<|system|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(corpus(20000, seed=7), trainer=trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        model_max_length=MAX_LEN,
    )
    tok.chat_template = CHAT_TEMPLATE
    stats = tokenizer_stats(tok)
    assert min(stats["hello_tokens"], stats["space_hello_tokens"]) >= MIN_HELLO_TOKENS, stats
    assert stats["english_tokens_per_word"] >= MIN_ENGLISH_TOKENS_PER_WORD, stats
    tok.save_pretrained(out)
    return tok, stats


def build_lora(out: Path, config) -> None:  # type: ignore[no-untyped-def]
    """A PEFT-format LoRA adapter with random (non-zero) A and B, so it changes outputs."""
    import torch
    from safetensors.torch import save_file

    head_dim = config.hidden_size // config.num_attention_heads
    kv = config.num_key_value_heads * head_dim
    dims = {"q_proj": (config.hidden_size, config.hidden_size), "k_proj": (config.hidden_size, kv),
            "v_proj": (config.hidden_size, kv), "o_proj": (config.hidden_size, config.hidden_size)}
    gen = torch.Generator().manual_seed(SPEC["seed"] + 1)
    tensors = {}
    for layer in range(config.num_hidden_layers):
        for proj in LORA_TARGETS:
            fan_in, fan_out = dims[proj]
            key = f"base_model.model.model.layers.{layer}.self_attn.{proj}"
            tensors[f"{key}.lora_A.weight"] = torch.randn(LORA_RANK, fan_in, generator=gen) * 0.1
            tensors[f"{key}.lora_B.weight"] = torch.randn(fan_out, LORA_RANK, generator=gen) * 0.1
    out.mkdir()
    save_file(tensors, str(out / "adapter_model.safetensors"))
    adapter = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": LORA_RANK,
        "lora_alpha": 2 * LORA_RANK, "lora_dropout": 0.0, "target_modules": list(LORA_TARGETS),
        "bias": "none", "fan_in_fan_out": False, "modules_to_save": None,
        "use_rslora": False, "use_dora": False, "init_lora_weights": True,
        "base_model_name_or_path": str(out.parent),
    }  # fmt: skip
    (out / "adapter_config.json").write_text(json.dumps(adapter, indent=1) + "\n")


def build(out: Path) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    t0 = time.monotonic()
    tmp = out.with_name(out.name + ".building")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    tok, stats = build_tokenizer(tmp)

    torch.manual_seed(SPEC["seed"])
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=SPEC["hidden_size"],
        intermediate_size=SPEC["intermediate_size"],
        num_hidden_layers=SPEC["num_hidden_layers"],
        num_attention_heads=SPEC["num_attention_heads"],
        num_key_value_heads=SPEC["num_key_value_heads"],
        max_position_embeddings=MAX_LEN,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=False,
        torch_dtype="float32",
    )
    model = LlamaForCausalLM(config).to(torch.float32)
    model.save_pretrained(tmp, safe_serialization=True)
    build_lora(tmp / LORA_DIR, config)

    # a smoke check before anything is published
    text = tok.apply_chat_template([{"role": "user", "content": "hello world"}],
                                   add_generation_prompt=True, tokenize=False)
    ids = tok(text, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits
    assert logits.shape[-1] == len(tok), (logits.shape, len(tok))

    info = {**SPEC, "recipe": recipe(), "vocab_size": len(tok), **stats,
            "lora": {"dir": LORA_DIR, "rank": LORA_RANK, "targets": list(LORA_TARGETS)},
            "seconds": round(time.monotonic() - t0, 1)}
    (tmp / MARKER).write_text(json.dumps(info, indent=1) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    print(f"build_model: built {out} in {info['seconds']} s: {stats}", file=sys.stderr)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(f"usage: {argv[0]} DIR", file=sys.stderr)
        return 2
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    out = Path(argv[1]).resolve()
    if is_current(out):
        print(f"build_model: reusing {out} (recipe {recipe()})", file=sys.stderr)
        return 0
    if (out / MARKER).exists():
        print(f"build_model: {out} was built by another recipe: rebuilding", file=sys.stderr)
    build(out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
