"""The simulator's tokenizer: deterministic and cheap, no vocabulary file.

Token counting (``chars_per_token`` is SimConfig's):
  * a text's tokens are its whitespace-separated words; with ``chars_per_token`` N > 0 a
    word of L characters is ceil(L / N) tokens (N = 0: one token per word);
  * completions: ``prompt`` may be a string, a list of strings (counts are summed), a list
    of token ids (one token per id) or a list of such lists;
  * chat: the tokens of every message's text content, plus 8 tokens per conversation for
    the chat template (closer to real vLLM 0.32 than a per-message cost).

Token ids (for POST /tokenize) agree with the counts: a word piece's id is a hash of the
piece, the chat template's tokens are ids 1..8 (4 before the messages, 4 after).
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator, Mapping

CHAT_TEMPLATE_TOKENS = 8  # per conversation
VOCAB_SIZE = 32000
_FIRST_WORD_ID = 100  # ids below are special tokens


def word_pieces(word: str, chars_per_token: int) -> list[str]:
    if chars_per_token <= 0:
        return [word]
    return [word[i : i + chars_per_token] for i in range(0, len(word), chars_per_token)]


def count_text_tokens(text: str, chars_per_token: int = 0) -> int:
    """Whitespace-separated words, or ceil(len(word) / chars_per_token) per word."""
    if chars_per_token <= 0:
        return len(text.split())
    n = chars_per_token
    return sum(-(-len(w) // n) for w in text.split())


def text_token_ids(text: str, chars_per_token: int = 0) -> list[int]:
    return [
        _FIRST_WORD_ID + zlib.crc32(piece.encode()) % (VOCAB_SIZE - _FIRST_WORD_ID)
        for word in text.split()
        for piece in word_pieces(word, chars_per_token)
    ]


def completion_prompt_tokens(prompt: object, chars_per_token: int = 0) -> int:
    """Tokens of a completions ``prompt``; raises ValueError on an unsupported shape."""
    if isinstance(prompt, str):
        return count_text_tokens(prompt, chars_per_token)
    if isinstance(prompt, list) and prompt:
        if all(isinstance(p, str) for p in prompt):
            return sum(count_text_tokens(p, chars_per_token) for p in prompt)
        if all(isinstance(p, int) and not isinstance(p, bool) for p in prompt):
            return len(prompt)
        if all(isinstance(p, list) for p in prompt):
            return sum(completion_prompt_tokens(p, chars_per_token) for p in prompt)
    raise ValueError("prompt must be a string, a list of strings or a list of token ids")


def completion_token_ids(prompt: object, chars_per_token: int = 0) -> list[int]:
    """Token ids of a completions ``prompt`` (already validated by
    completion_prompt_tokens): the texts' ids, or the ids given."""
    if isinstance(prompt, str):
        return text_token_ids(prompt, chars_per_token)
    out: list[int] = []
    if isinstance(prompt, list):
        for p in prompt:
            if isinstance(p, int):
                out.append(p)
            else:
                out += completion_token_ids(p, chars_per_token)
    return out


def _message_texts(messages: object) -> Iterator[str]:
    """The text parts of chat ``messages``; raises ValueError on an unsupported shape."""
    if not isinstance(messages, list) or not messages:
        raise ValueError("messages must be a non-empty list")
    for message in messages:
        if not isinstance(message, Mapping):
            raise ValueError("each message must be an object")
        content = message.get("content")
        if isinstance(content, str):
            yield content
        elif isinstance(content, list):  # content parts: [{"type": "text", "text": ...}]
            for part in content:
                if isinstance(part, Mapping) and isinstance(part.get("text"), str):
                    yield part["text"]
        elif content is not None:
            raise ValueError("message content must be a string or a list of parts")


def chat_prompt_tokens(messages: object, chars_per_token: int = 0) -> int:
    """Tokens of chat ``messages``; raises ValueError on an unsupported shape."""
    words = sum(count_text_tokens(t, chars_per_token) for t in _message_texts(messages))
    return words + CHAT_TEMPLATE_TOKENS


def chat_token_ids(messages: object, chars_per_token: int = 0) -> list[int]:
    """Token ids of chat ``messages`` with the template's; ValueError on a bad shape."""
    half = CHAT_TEMPLATE_TOKENS // 2
    ids = list(range(1, half + 1))
    for text in _message_texts(messages):
        ids += text_token_ids(text, chars_per_token)
    return ids + list(range(half + 1, CHAT_TEMPLATE_TOKENS + 1))


# ---------------------------------------------------------------- generated text

_SYLLABLES = ("to", "no", "so", "mo", "lu", "ka", "ri", "te", "va", "pe", "zi", "don")


def generated_token(index: int, salt: int = 0) -> str:
    """The index-th generated token: a deterministic pseudo-word piece such as " tonoso"."""
    h = (index * 2654435761 + salt * 40503) & 0xFFFFFFFF
    word = "".join(_SYLLABLES[(h >> s) % len(_SYLLABLES)] for s in (0, 5, 11)[: 1 + h % 3])
    return (" " if h & 8 else "") + word


def generated_text(n_tokens: int, salt: int = 0) -> str:
    return "".join(generated_token(i, salt) for i in range(n_tokens))
