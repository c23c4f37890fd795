"""The prefix cache of one simulated vLLM process: full blocks of prompt tokens, each
identified by a hash chained over every block before it (as vLLM's automatic prefix
caching), kept in LRU order up to a capacity in blocks.

As vLLM: only full blocks are cached; a prompt's last token is always computed (a prompt
made only of cached blocks reuses all but its last block); the blocks of a request are
freed tail first, so a prefix's first block is the last of it to be evicted.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence


def block_hashes(ids: Sequence[int], block_tokens: int) -> list[int]:
    """The chained hash of each full block of token ids (a tuple of ints hashes the same
    in every process)."""
    out: list[int] = []
    h = 0
    for i in range(0, len(ids) - block_tokens + 1, block_tokens):
        h = hash((h, tuple(ids[i : i + block_tokens])))
        out.append(h)
    return out


class PrefixCache:
    """LRU set of chained block hashes; capacity 0 caches nothing."""

    def __init__(self, block_tokens: int, capacity_blocks: int) -> None:
        self.block_tokens = block_tokens
        self.capacity = capacity_blocks
        self._blocks: OrderedDict[int, None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._blocks)

    def held(self, ids: Sequence[int]) -> int:
        """How many of the prompt's leading tokens this cache holds in full blocks, without
        using them (the LRU order is left as it is); 0 with the cache off."""
        blocks = self._blocks
        hit = 0
        for h in block_hashes(ids, self.block_tokens) if self.capacity > 0 else ():
            if h not in blocks:
                break
            hit += 1
        return hit * self.block_tokens

    def serve(self, ids: Sequence[int]) -> int:
        """A prompt is scheduled: how many of its tokens were cached; its full blocks are
        cached from now on (most recently used)."""
        if self.capacity <= 0:
            return 0
        bs = self.block_tokens
        hashes = block_hashes(ids, bs)
        blocks = self._blocks
        hit = 0
        for h in hashes:
            if h not in blocks:
                break
            hit += 1
        usable = (len(ids) - 1) // bs  # the last token is always computed
        cached = min(hit, usable) * bs
        for h in reversed(hashes):  # tail first: the head ends most recently used
            blocks[h] = None
            blocks.move_to_end(h)
        while len(blocks) > self.capacity:
            blocks.popitem(last=False)
        return cached
