"""PrefixCache's rules on its own: kept on second sight, taken up only at piece starts, longest first, within budget."""

import numpy as np
import pytest

from edge_agent.engine.prefix_cache import PrefixCache


def kv(tokens: int, fill: float = 1.0) -> list[np.ndarray]:
    """Two buffers' snapshot of `tokens` slots (2 heads x 4 dims, float32): 64 bytes a slot."""
    return [np.full((2, tokens, 4), fill, dtype=np.float32) for _ in range(2)]


def offer(cache: PrefixCache, ids: list[int], end: int, fill: float = 1.0) -> bool:
    if cache.wants(ids, end):
        cache.keep(ids, end, kv(end, fill))
        return True
    return False


IDS = list(range(100, 164))


def test_a_prefix_is_kept_the_second_time_it_is_seen_and_once_only():
    cache = PrefixCache(1 << 20)
    assert not offer(cache, IDS, 16)  # first sight: remembered, not copied
    assert len(cache) == 0
    assert offer(cache, IDS, 16)
    assert not offer(cache, IDS, 16)  # already kept
    assert len(cache) == 1 and cache.nbytes == 16 * 64 and cache.stats.kept == 1


def test_the_longest_kept_prefix_among_the_prompts_piece_starts_is_taken_up():
    cache = PrefixCache(1 << 20)
    for end, fill in ((16, 1.0), (32, 2.0), (48, 3.0)):
        offer(cache, IDS, end, fill)
        offer(cache, IDS, end, fill)
    start, arrays = cache.longest(IDS, [0, 16, 32])  # 48 is not a piece start of this prompt
    assert start == 32 and arrays[0][0, 0, 0] == 2.0
    assert cache.longest(IDS[:20] + [7] * 40, [0, 16, 32, 48])[0] == 16  # parts after token 20: only 16 matches
    assert cache.longest([1] + IDS[1:], [0, 16, 32]) is None  # a different first token: nothing
    assert cache.stats.hits == 2 and cache.stats.tokens_reused == 48


def test_the_budget_is_never_exceeded_and_the_least_recently_used_goes_first():
    cache = PrefixCache(3 * 16 * 64)  # room for three 16-slot prefixes
    prompts = [[n] * 64 for n in range(4)]
    for ids in prompts[:3]:
        offer(cache, ids, 16)
        offer(cache, ids, 16)
    assert len(cache) == 3
    cache.longest(prompts[0], [16])  # the oldest is used: now the newest
    offer(cache, prompts[3], 16)
    offer(cache, prompts[3], 16)
    assert cache.nbytes <= cache.budget_bytes and len(cache) == 3 and cache.stats.evicted == 1
    assert cache.longest(prompts[1], [16]) is None  # the least recently used one left
    assert cache.longest(prompts[0], [16]) is not None
    offer(cache, IDS, 64)
    offer(cache, IDS, 64)  # wanted, but larger than the whole budget: not kept, nothing evicted for it
    assert cache.longest(IDS, [64]) is None and len(cache) == 3 and cache.nbytes <= cache.budget_bytes


def test_a_zero_budget_keeps_nothing_and_a_negative_one_is_refused():
    cache = PrefixCache(0)
    for _ in range(3):
        assert not offer(cache, IDS, 16)
    with pytest.raises(ValueError, match="budget"):
        PrefixCache(-1)
