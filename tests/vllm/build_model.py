"""Build a tiny random-weight Llama and its tokenizer locally, for real vLLM on the CPU.

    <vllm-venv>/bin/python tests/vllm/build_model.py DIR

Runs inside the vLLM venv (it needs torch, transformers and tokenizers, which the project
venv does not have). Nothing is downloaded: the tokenizer is a byte-level BPE trained here
on generated text, the weights are random. Cached: a complete DIR is left alone.

The shape is the smallest that vLLM 0.32's CPU backend serves: head_dim 32 (hidden 64,
2 heads); head_dim 16 passes /health and then kills the engine on the first request.
"""

from __future__ import annotations

import json
import os
import random
import sys
import time
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

VOCAB = 3000
MAX_LEN = 1024
MARKER = "warmgw-tiny.json"  # written last: its presence means the directory is complete
SPECIALS = ["<unk>", "<s>", "</s>", "<pad>"]
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for m in messages %}"
    "<|{{ m['role'] }}|>\n{{ m['content'] }}\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
SPEC = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 2,
    "vocab_size": VOCAB,
    "max_position_embeddings": MAX_LEN,
    "seed": 1234,
}


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


def build(out: Path) -> None:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    t0 = time.monotonic()
    tmp = out.with_name(out.name + ".building")
    tmp.mkdir(parents=True, exist_ok=True)

    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB,
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
    tok.save_pretrained(tmp)

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

    # a smoke check before anything is published
    text = tok.apply_chat_template([{"role": "user", "content": "hello world"}],
                                   add_generation_prompt=True, tokenize=False)
    ids = tok(text, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits
    assert logits.shape[-1] == len(tok), (logits.shape, len(tok))

    info = {**SPEC, "vocab_size": len(tok), "seconds": round(time.monotonic() - t0, 1)}
    (tmp / MARKER).write_text(json.dumps(info, indent=1) + "\n")
    if out.exists():
        import shutil

        shutil.rmtree(out)
    tmp.rename(out)
    print(f"build_model: built {out} in {info['seconds']} s", file=sys.stderr)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(f"usage: {argv[0]} DIR", file=sys.stderr)
        return 2
    out = Path(argv[1]).resolve()
    if (out / MARKER).exists():
        print(f"build_model: reusing {out}", file=sys.stderr)
        return 0
    build(out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
