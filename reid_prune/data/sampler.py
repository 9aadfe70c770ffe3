"""PK batch sampler: P identities x K images per batch, as batch-hard triplet mining needs."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler


class PKSampler(Sampler[list[int]]):
    """Batch sampler yielding lists of ``p * k`` dataset indices: ``k`` images of each of ``p`` identities.

    One epoch uses every identity once, in an order shuffled from ``(seed,
    epoch)`` only, so it does not touch the global RNG and every process
    computes the same order. The identities are chunked into batches of ``p``;
    rank ``r`` of ``num_replicas`` takes batches ``r, r + W, r + 2W, ...`` so
    ranks see disjoint identities, and every rank gets the same number of
    batches. Within a batch the ``k`` images of an identity are drawn without
    replacement, or with replacement when the identity has fewer than ``k``.

    Under DDP one optimiser step therefore sees ``p * k * W`` images (the global
    batch), and batch-hard mining runs within each rank's ``p`` identities. The
    ``s``-th batch of rank ``r`` is batch ``s * W + r`` of the same sampler with
    ``num_replicas=1``: a W-rank epoch is the one-process epoch dealt out to the
    ranks (with ``drop_last``, less at most ``W - 1`` trailing batches).

    Args:
        pids: identity of each dataset item (index i -> pids[i]).
        p: identities per batch (>= 2, so that every batch has negatives).
        k: images per identity (>= 1).
        seed: base seed of the shuffle; call :meth:`set_epoch` to vary it per epoch.
        num_replicas: number of distributed processes W.
        rank: this process, in ``0..W-1``.
        drop_last: drop the incomplete last chunk of identities and the batches
            that would leave ranks uneven. When False, the identity order is
            extended cyclically so every identity is used and all ranks get
            full batches.
    """

    def __init__(
        self,
        pids: Sequence[int],
        p: int,
        k: int,
        *,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
        drop_last: bool = True,
    ) -> None:
        if p < 2:
            raise ValueError(f"PKSampler: p must be >= 2 identities per batch (a batch needs negatives), got {p}")
        if k < 1:
            raise ValueError(f"PKSampler: k must be >= 1 image per identity, got {k}")
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(
                f"PKSampler: need num_replicas >= 1 and 0 <= rank < num_replicas, got {rank=}, {num_replicas=}"
            )
        pid_array = np.asarray(pids, dtype=np.int64)
        unique_pids, inverse = np.unique(pid_array, return_inverse=True)
        if len(unique_pids) < p * num_replicas:
            raise ValueError(
                f"PKSampler: {len(unique_pids)} identities cannot fill one batch of p={p} identities on each of "
                f"{num_replicas} replica(s); lower p or use more identities"
            )
        order = np.argsort(inverse, kind="stable")
        # indices_of[i]: dataset indices of the i-th identity (in sorted pid order).
        self.indices_of = np.split(order, np.cumsum(np.bincount(inverse))[:-1])
        self.p, self.k = p, k
        self.seed, self.epoch = seed, 0
        self.num_replicas, self.rank = num_replicas, rank
        self.drop_last = drop_last
        num_ids = len(unique_pids)
        if drop_last:
            self.batches_per_rank = num_ids // p // num_replicas
        else:
            self.batches_per_rank = -(-num_ids // (p * num_replicas))

    def set_epoch(self, epoch: int) -> None:
        """Reseed the shuffle for ``epoch`` (same on every rank)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return self.batches_per_rank

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        num_ids = len(self.indices_of)
        num_batches = self.batches_per_rank * self.num_replicas
        identity_order = rng.permutation(num_ids)
        # Cyclic extension only matters when drop_last is False; otherwise this truncates.
        identity_order = np.resize(identity_order, num_batches * self.p).reshape(num_batches, self.p)
        # Draw images for every batch on every rank, so all ranks consume the RNG identically.
        batches = []
        for identities in identity_order:
            batch = []
            for identity in identities:
                candidates = self.indices_of[identity]
                batch.extend(rng.choice(candidates, self.k, replace=len(candidates) < self.k).tolist())
            batches.append(batch)
        yield from batches[self.rank :: self.num_replicas]
