"""Device-side training data: history gathering, epoch batches and the attention encoder's windows,
checked against brute force."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from recsys.data.device import DeviceInteractions, RowArrays, gather_history, user_histories
from recsys.data.interactions import IndexedInteractions
from recsys.training.batches import Batch, epoch_order, iterate_batches, iterate_windows, sequence_windows

CPU = torch.device("cpu")


def _indexed(
    counts: list[int], items: list[int] | None = None, num_items: int | None = None
) -> IndexedInteractions:
    """A CSR over users with ``counts[u]`` interactions each; items default to their flat position."""
    users = np.repeat(np.arange(len(counts)), counts).astype(np.int64)
    item_array = np.arange(len(users), dtype=np.int64) if items is None else np.array(items, dtype=np.int64)
    indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return IndexedInteractions(
        users=users,
        items=item_array,
        timestamps=np.arange(len(users), dtype=np.float64),
        indptr=indptr,
        num_users=len(counts),
        num_items=num_items if num_items is not None else len(users),
    )


# Users 0..3 with 3, 1, 0 and 4 interactions (user 2 has none); item ids chosen by hand.
HAND = _indexed([3, 1, 0, 4], items=[5, 2, 7, 4, 1, 3, 6, 0], num_items=8)


def _brute_history(items: list[int], start: int, end: int, length: int) -> tuple[list[int], list[bool]]:
    history, mask = [], []
    for offset in range(1, length + 1):
        position = end - offset
        inside = position >= start
        history.append(items[position] if inside else 0)
        mask.append(inside)
    return history, mask


def test_from_indexed_keeps_the_csr_and_each_rows_user_start() -> None:
    data = DeviceInteractions.from_indexed(HAND, CPU)
    assert data.starts.tolist() == [0, 0, 0, 3, 4, 4, 4, 4]
    assert data.indptr.tolist() == [0, 3, 4, 4, 8]
    assert data.items.dtype == torch.int64
    assert (data.num_users, data.num_items, data.num_interactions) == (4, 8, 8)


@pytest.mark.parametrize("length", [1, 2, 5])
def test_gather_history_matches_brute_force_at_every_position(length: int) -> None:
    data = DeviceInteractions.from_indexed(HAND, CPU)
    positions = torch.arange(data.num_interactions)
    history, mask = gather_history(data.items, data.starts[positions], positions, length)
    assert history.shape == mask.shape == (8, length)
    assert history.dtype == torch.int64 and mask.dtype == torch.bool
    items = HAND.items.tolist()
    for j in range(8):
        expected = _brute_history(items, int(HAND.indptr[HAND.users[j]]), j, length)
        assert (history[j].tolist(), mask[j].tolist()) == expected, f"position {j}"


def test_gather_history_by_hand() -> None:
    data = DeviceInteractions.from_indexed(HAND, CPU)
    # Position 6 (user 3, items 1 3 | 6 0): the items before it, most recent first, then padding;
    # never user 1's item 4 at position 3.
    history, mask = gather_history(data.items, data.starts[6:7], torch.tensor([6]), 4)
    assert history.tolist() == [[3, 1, 0, 0]]
    assert mask.tolist() == [[True, True, False, False]]
    # Position 4 is user 3's first interaction: nothing before it.
    history, mask = gather_history(data.items, data.starts[4:5], torch.tensor([4]), 3)
    assert history.tolist() == [[0, 0, 0]]
    assert not mask.any()


def test_user_histories_are_each_users_latest_items() -> None:
    data = DeviceInteractions.from_indexed(HAND, CPU)
    history, mask = user_histories(data, torch.tensor([0, 1, 2, 3]), 3)
    assert history.tolist() == [[7, 2, 5], [4, 0, 0], [0, 0, 0], [0, 6, 3]]
    assert mask.tolist() == [
        [True, True, True],
        [True, False, False],
        [False, False, False],
        [True, True, True],
    ]


def _epoch(
    data: DeviceInteractions, seed: int, *, dropout: float = 0.0, batch_size: int = 3, length: int = 4
) -> list[Batch]:
    generator = torch.Generator().manual_seed(seed)
    order = epoch_order(data.num_interactions, generator)
    return list(
        iterate_batches(
            data,
            order,
            batch_size=batch_size,
            history_length=length,
            user_id_dropout=dropout,
            generator=generator,
        )
    )


def test_an_epoch_covers_every_interaction_exactly_once() -> None:
    data = DeviceInteractions.from_indexed(HAND, CPU)
    batches = _epoch(data, seed=0)
    assert [b.users.shape[0] for b in batches] == [3, 3, 2]
    pairs = sorted(
        (int(u), int(i)) for b in batches for u, i in zip(b.users.tolist(), b.positives.tolist(), strict=True)
    )
    assert pairs == sorted(zip(HAND.users.tolist(), HAND.items.tolist(), strict=True))


def test_epochs_are_deterministic_for_a_seed_and_shuffled_between_seeds() -> None:
    data = DeviceInteractions.from_indexed(_indexed([5, 7, 3, 9]), CPU)
    first, again, other = (_epoch(data, seed=s, dropout=0.5) for s in (3, 3, 4))
    for a, b in zip(first, again, strict=True):
        for field in ("users", "positives", "history", "history_mask"):
            assert torch.equal(getattr(a, field), getattr(b, field))
    order = torch.cat([b.positives for b in first])
    assert not torch.equal(order, torch.cat([b.positives for b in other]))


def test_histories_never_include_the_target_or_anything_later() -> None:
    # Items equal their flat positions, so an item in a history tells where it came from.
    counts = [6, 1, 4, 9, 2]
    source = _indexed(counts)
    data = DeviceInteractions.from_indexed(source, CPU)
    for batch in _epoch(data, seed=7, batch_size=4, length=5):
        for target, history, mask in zip(batch.positives, batch.history, batch.history_mask, strict=True):
            start = int(source.indptr[source.users[int(target)]])
            expected = [p for p in range(int(target) - 1, start - 1, -1)][:5]
            assert history[mask].tolist() == expected
            assert all(p < int(target) for p in history[mask].tolist())


def test_user_id_dropout_hides_about_p_of_the_ids() -> None:
    data = DeviceInteractions.from_indexed(_indexed([40] * 50), CPU)  # 2000 interactions
    unknown = data.num_users
    hidden = sum(int((b.users == unknown).sum()) for b in _epoch(data, seed=0, dropout=0.3, batch_size=256))
    assert 0.26 < hidden / data.num_interactions < 0.34
    # Hidden ids are replaced, but the positives and histories stay those of the real user.
    for batch in _epoch(data, seed=1, dropout=0.3, batch_size=256):
        shown = batch.users != unknown
        assert torch.equal(batch.users[shown], data.users[batch.positives[shown]])


def test_zero_dropout_hides_nothing() -> None:
    data = DeviceInteractions.from_indexed(_indexed([40] * 50), CPU)
    for batch in _epoch(data, seed=0, dropout=0.0, batch_size=256):
        assert torch.equal(batch.users, data.users[batch.positives])


def _brute_windows(indptr: list[int], length: int) -> list[tuple[int, int, int]]:
    """(user, start, end) of every window: the latest ``length + 1`` events, then the ones before."""
    span = length + 1
    windows = []
    for user in range(len(indptr) - 1):
        end = indptr[user + 1]
        while end > indptr[user]:
            windows.append((user, max(indptr[user], end - span), end))
            end -= span
    return windows


def _random_rows(counts: list[int], seed: int) -> tuple[IndexedInteractions, RowArrays]:
    rng = np.random.default_rng(seed)
    source = _indexed(counts, items=rng.integers(0, 30, sum(counts)).tolist(), num_items=30)
    size = source.num_interactions
    return source, RowArrays(
        gaps=rng.integers(1, 20, size),
        events=rng.integers(1, 4, size),
        context=rng.integers(0, 5, (size, 2)),
        context_numeric=rng.normal(size=(size, 1)).astype(np.float32),
        weights=rng.choice([1.0, 2.0, 3.0], size).astype(np.float32),
        targets=rng.random(size) < 0.7,
    )


# Users with no event, one, exactly a window's worth, one more, and several windows' worth.
WINDOW_COUNTS = [0, 1, 4, 5, 6, 13, 2, 9]


@pytest.mark.parametrize("length", [1, 3, 4, 8])
def test_sequence_windows_match_brute_force(length: int) -> None:
    source, _ = _random_rows(WINDOW_COUNTS, seed=length)
    windows = sequence_windows(DeviceInteractions.from_indexed(source, CPU), length)
    got = list(zip(windows.users.tolist(), windows.starts.tolist(), windows.ends.tolist(), strict=True))
    assert got == _brute_windows(source.indptr.tolist(), length)
    assert windows.count == len(got)
    # Every event is in exactly one window.
    covered = sorted(p for _, start, end in got for p in range(start, end))
    assert covered == list(range(source.num_interactions))


@pytest.mark.parametrize("length", [1, 3, 8])
def test_iterate_windows_matches_brute_force(length: int) -> None:
    source, rows = _random_rows(WINDOW_COUNTS, seed=10 + length)
    data = DeviceInteractions.from_indexed(source, CPU, rows)
    windows = sequence_windows(data, length)
    generator = torch.Generator().manual_seed(0)
    order = epoch_order(windows.count, generator)
    batches = list(
        iterate_windows(
            data,
            windows,
            order,
            windows_per_step=3,
            history_length=length,
            user_id_dropout=0.0,
            generator=generator,
        )
    )
    assert [int(b.users.shape[0]) for b in batches] == [3] * (windows.count // 3) + (
        [windows.count % 3] if windows.count % 3 else []
    )
    assert rows.gaps is not None and rows.events is not None and rows.context is not None
    assert rows.weights is not None and rows.targets is not None
    items = source.items.tolist()
    seen = []
    for batch, chosen in zip(batches, torch.split(order, 3), strict=True):
        for row, index in enumerate(chosen.tolist()):
            user, start, end = _brute_windows(source.indptr.tolist(), length)[index]
            seen.append(index)
            size = end - start
            # Position 0 reads the start token; position t >= 1 the event before target t.
            tokens = [0] + [items[start + t - 1] for t in range(1, size)] + [0] * (length + 1 - size)
            assert batch.tokens[row].tolist() == tokens
            assert batch.lengths[row] == size
            assert batch.users[row] == batch.attribute_rows[row] == user
            targets = [start + t for t in range(size) if rows.targets[start + t]]
            mask = batch.target_mask[row]
            assert mask.tolist() == [t < size and bool(rows.targets[start + t]) for t in range(length + 1)]
            assert batch.targets[row][mask].tolist() == [items[p] for p in targets]
            assert batch.weights is not None and batch.context is not None
            assert batch.weights[row][mask].tolist() == rows.weights[targets].tolist()
            assert batch.context[row][mask].tolist() == rows.context[targets].tolist()
            assert batch.token_events is not None and batch.token_gaps is not None
            before = [start + t - 1 for t in range(1, size)]
            assert batch.token_events[row][1:size].tolist() == rows.events[before].tolist()
            assert batch.token_gaps[row][1:size].tolist() == rows.gaps[before].tolist()
            assert not batch.token_events[row][size:].any() and batch.token_events[row][0] == 0
    assert sorted(seen) == list(range(windows.count))


def test_batches_carry_each_positives_weight_and_only_target_positions_are_drawn() -> None:
    source, rows = _random_rows([6, 1, 4, 9], seed=3)
    data = DeviceInteractions.from_indexed(source, CPU, rows)
    targets = data.target_positions()
    assert rows.targets is not None and rows.weights is not None
    assert targets.tolist() == np.flatnonzero(rows.targets).tolist()
    generator = torch.Generator().manual_seed(0)
    positions = targets[epoch_order(targets.shape[0], generator)]
    for batch, chunk in zip(
        iterate_batches(
            data, positions, batch_size=4, history_length=3, user_id_dropout=0.0, generator=generator
        ),
        torch.split(positions, 4),
        strict=True,
    ):
        assert batch.weights is not None
        assert batch.positives.tolist() == source.items[chunk.numpy()].tolist()
        assert batch.weights.tolist() == rows.weights[chunk.numpy()].tolist()
