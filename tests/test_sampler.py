"""PKSampler: batch structure, determinism, replacement, epochs and distributed ranks."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from reid_prune.data import PKSampler

# 10 identities; identity 9 has only 2 images, the others 4 or 6.
PIDS = [pid for pid in range(10) for _ in range(2 if pid == 9 else 4 + 2 * (pid % 2))]


def _identities(batch: list[int]) -> list[int]:
    return [PIDS[i] for i in batch]


def test_batches_are_p_identities_by_k_images():
    sampler = PKSampler(PIDS, p=3, k=2, seed=1)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 10 // 3
    seen = []
    for batch in batches:
        assert len(batch) == 6 and all(isinstance(i, int) for i in batch)
        counts = Counter(_identities(batch))
        assert len(counts) == 3 and set(counts.values()) == {2}
        # Identities come in consecutive runs of k.
        assert _identities(batch)[::2] == _identities(batch)[1::2]
        seen += counts
        # k=2 <= every identity's image count: no image repeats within an identity.
        assert len(set(batch)) == 6
    assert len(set(seen)) == len(seen) == 9  # each identity at most once per epoch


def test_same_seed_same_batches_and_global_rng_untouched():
    torch.manual_seed(123)
    first = list(PKSampler(PIDS, p=2, k=3, seed=5))
    state = torch.random.get_rng_state()
    torch.manual_seed(999)
    second = list(PKSampler(PIDS, p=2, k=3, seed=5))
    assert first == second
    assert list(PKSampler(PIDS, p=2, k=3, seed=6)) != first
    torch.manual_seed(123)
    list(PKSampler(PIDS, p=2, k=3, seed=5))
    assert torch.equal(torch.random.get_rng_state(), state)


def test_few_images_are_drawn_with_replacement():
    sampler = PKSampler(PIDS, p=10, k=5, seed=0)
    (batch,) = list(sampler)
    for pid in range(10):
        images = [i for i in batch if PIDS[i] == pid]
        assert len(images) == 5 and all(PIDS[i] == pid for i in images)
        available = PIDS.count(pid)
        if available < 5:
            assert len(set(images)) <= available  # repeats are forced
        else:
            assert len(set(images)) == 5


def test_set_epoch_changes_order_deterministically():
    sampler = PKSampler(PIDS, p=2, k=2, seed=0)
    epoch0 = list(sampler)
    assert list(sampler) == epoch0  # no hidden state between iterations
    sampler.set_epoch(1)
    epoch1 = list(sampler)
    assert epoch1 != epoch0
    sampler.set_epoch(0)
    assert list(sampler) == epoch0
    other = PKSampler(PIDS, p=2, k=2, seed=0)
    other.set_epoch(1)
    assert list(other) == epoch1


def test_ranks_get_disjoint_identities_and_equal_lengths():
    world = 3
    samplers = [PKSampler(PIDS, p=2, k=2, seed=4, num_replicas=world, rank=r) for r in range(world)]
    # 10 identities -> 5 batches of 2 -> 5 // 3 = 1 batch per rank.
    assert [len(s) for s in samplers] == [1, 1, 1]
    per_rank = [{pid for batch in s for pid in _identities(batch)} for s in samplers]
    assert all(len(ids) == 2 for ids in per_rank)
    assert not (per_rank[0] & per_rank[1] or per_rank[0] & per_rank[2] or per_rank[1] & per_rank[2])

    # Rank r takes batches r, r + W, ... of the single-process order.
    two = [list(PKSampler(PIDS, p=2, k=2, seed=4, num_replicas=2, rank=r)) for r in range(2)]
    single = list(PKSampler(PIDS, p=2, k=2, seed=4))
    assert two[0] == single[0:4:2] and two[1] == single[1:4:2]


def test_without_drop_last_every_identity_is_used():
    sampler = PKSampler(PIDS, p=4, k=1, seed=2, drop_last=False)
    batches = list(sampler)
    assert len(sampler) == len(batches) == 3  # ceil(10 / 4); the last batch wraps around
    assert all(len(set(_identities(b))) == 4 for b in batches)
    assert {pid for b in batches for pid in _identities(b)} == set(range(10))
    ranks = [PKSampler(PIDS, p=2, k=1, seed=2, num_replicas=3, rank=r, drop_last=False) for r in range(3)]
    assert [len(r) for r in ranks] == [2, 2, 2]  # ceil(10 / 6) batches each


def test_invalid_arguments():
    with pytest.raises(ValueError, match="p must be >= 2"):
        PKSampler(PIDS, p=1, k=4)
    with pytest.raises(ValueError, match="k must be >= 1"):
        PKSampler(PIDS, p=2, k=0)
    with pytest.raises(ValueError, match="10 identities cannot fill one batch of p=6 identities on each of 2"):
        PKSampler(PIDS, p=6, k=2, num_replicas=2)
    with pytest.raises(ValueError, match="1 identities cannot fill"):
        PKSampler([7, 7, 7], p=2, k=2)
    with pytest.raises(ValueError, match="rank"):
        PKSampler(PIDS, p=2, k=2, num_replicas=2, rank=2)
