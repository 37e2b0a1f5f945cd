"""The sequential references, the cold-user split and the quality table, on tiny synthetic data."""

from __future__ import annotations

import json
from collections.abc import Iterator

import numpy as np
import pandas as pd
import pytest
import torch

from benchmarks.baselines import full_ranking_metrics, ranked_list_metrics
from benchmarks.quality import format_markdown, format_table, split_cold_users, table_rows
from benchmarks.sequential import (
    IGNORE,
    SequenceModelConfig,
    TrainingSettings,
    Validation,
    build_model,
    build_sequences,
    fit_sequence_model,
    left_padded_tokens,
    score_next_items,
    training_windows,
)

NUM_ITEMS = 30


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny tensors: one thread is faster than two (and than sharing the cores with other jobs)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def successor_sequences(num_users: int, seed: int) -> list[np.ndarray]:
    """Runs of consecutive items (item i + 1 always follows item i), never wrapping around."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(num_users):
        length = int(rng.integers(5, 12))
        start = int(rng.integers(0, NUM_ITEMS - length))
        out.append(np.arange(start, start + length, dtype=np.int64))
    return out


@pytest.mark.parametrize("architecture", ["sasrec", "gru4rec"])
def test_references_learn_the_successor_rule(architecture: str) -> None:
    config = SequenceModelConfig(architecture, NUM_ITEMS, max_length=12, hidden_size=32, dropout=0.1)  # type: ignore[arg-type]
    settings = TrainingSettings(batch_size=16, learning_rate=1e-2, seed=0)
    sequences = successor_sequences(80, seed=1)
    fit = fit_sequence_model(config, sequences, None, settings, epochs=12)
    histories = successor_sequences(200, seed=2)
    predicted = score_next_items(fit.model, histories).argmax(axis=1)
    expected = np.array([h[-1] + 1 for h in histories])
    # HR@1 of the successor: chance is 1 / 30.
    assert (predicted == expected).mean() >= 0.9
    assert fit.epochs_run == 12
    assert fit.predicted_positions == 12 * sum(len(s) - 1 for s in sequences)


def test_early_stopping_keeps_the_best_epoch_and_stops_after_patience() -> None:
    sequences = successor_sequences(40, seed=3)
    seen = np.zeros((len(sequences), NUM_ITEMS), dtype=np.float32)
    for row, sequence in enumerate(sequences):
        seen[row, sequence[:-1]] = 1.0
    validation = Validation([s[:-1] for s in sequences], [[int(s[-1])] for s in sequences], seen)
    config = SequenceModelConfig("gru4rec", NUM_ITEMS, max_length=16, hidden_size=16)
    settings = TrainingSettings(max_epochs=12, patience=2, batch_size=10, learning_rate=1e-2, seed=0)
    fit = fit_sequence_model(config, [s[:-1] for s in sequences], validation, settings)
    assert fit.best_validation_ndcg == max(fit.validation_ndcg)
    assert fit.validation_ndcg.index(fit.best_validation_ndcg) + 1 == fit.best_epoch
    assert fit.epochs_run == 12 or fit.epochs_run - fit.best_epoch == 2
    # The returned model is the best epoch's: scoring again gives the best validation NDCG.
    again = full_ranking_metrics(score_next_items(fit.model, validation.histories), seen, validation.relevant)
    assert again["ndcg@10"] == pytest.approx(fit.best_validation_ndcg, abs=1e-6)


@pytest.mark.parametrize("architecture", ["sasrec", "gru4rec"])
def test_padding_does_not_change_the_latest_state(architecture: str) -> None:
    torch.manual_seed(0)
    model = build_model(SequenceModelConfig(architecture, NUM_ITEMS, max_length=8, hidden_size=16)).eval()  # type: ignore[arg-type]
    short = torch.tensor([[4, 5, 6]])
    padded = torch.tensor([[0, 0, 0, 4, 5, 6]])
    with torch.no_grad():
        torch.testing.assert_close(model.encode(short)[:, -1], model.encode(padded)[:, -1])


def test_training_windows_are_left_padded_next_item_pairs_cut_from_the_end() -> None:
    inputs, targets = training_windows([np.array([0, 1, 2, 3, 4, 5]), np.array([7])], max_length=3)
    # 5 pairs cut from the end: (2,3,4 -> 3,4,5) then (0,1 -> 1,2), left-padded; a single item gives none.
    assert inputs.tolist() == [[3, 4, 5], [0, 1, 2]]  # tokens are item + 1
    assert targets.tolist() == [[3, 4, 5], [IGNORE, 1, 2]]


def test_left_padded_tokens_keep_the_latest_items() -> None:
    tokens = left_padded_tokens([np.array([0, 1, 2, 3]), np.array([5])], max_length=3)
    assert tokens.tolist() == [[2, 3, 4], [0, 0, 6]]


def test_build_sequences_orders_by_time_then_row() -> None:
    frame = pd.DataFrame(
        {"user_id": ["b", "a", "a", "a"], "item_id": ["x", "z", "y", "x"], "timestamp": [5, 3, 1, 3]}
    )
    sequences = build_sequences(frame, pd.Index(["a", "b", "c"]), pd.Index(["x", "y", "z"]))
    assert [s.tolist() for s in sequences] == [[1, 2, 0], [0], []]


def synthetic_interactions(num_users: int = 50, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for user in range(num_users):
        for _ in range(int(rng.integers(5, 30))):
            rows.append(
                (f"u{user:03d}", f"i{int(rng.integers(0, 40)):02d}", 4.0, int(rng.integers(0, 10_000)))
            )
    frame = pd.DataFrame(rows, columns=["user_id", "item_id", "rating", "timestamp"])
    return frame.sample(frac=1.0, random_state=seed).reset_index(drop=True)  # rows not in time order


def test_cold_split_holds_cold_users_out_and_cuts_by_time() -> None:
    interactions = synthetic_interactions()
    split = split_cold_users(interactions, fraction=0.1, history_share=0.8, seed=7)
    assert len(split.cold_users) == 5
    assert not set(split.train["user_id"]) & set(split.cold_users)
    assert set(split.history["user_id"]) == set(split.cold_users) == set(split.judged["user_id"])
    assert len(split.train) + len(split.history) + len(split.judged) == len(interactions)
    for user in split.cold_users:
        history = split.history[split.history["user_id"] == user]
        judged = split.judged[split.judged["user_id"] == user]
        n = len(history) + len(judged)
        assert len(history) == int(np.floor(0.8 * n))
        assert history["timestamp"].max() <= judged["timestamp"].min()
    # The draw is seeded: the same seed, the same users; another seed, others.
    assert split_cold_users(interactions, seed=7).cold_users == split.cold_users
    assert split_cold_users(interactions, seed=8).cold_users != split.cold_users


def test_ranked_list_metrics_match_full_ranking_on_the_same_lists() -> None:
    rng = np.random.default_rng(0)
    scores = rng.random((6, 12)).astype(np.float32)
    seen = np.zeros_like(scores)
    seen[:, :2] = 1.0
    relevant = [[3], [4, 5], [], [0, 7], [11], [2, 9, 10]]
    masked = np.where(seen > 0, -np.inf, scores)
    lists = np.argsort(-masked, axis=1, kind="stable")[:, :4].tolist()
    expected = full_ranking_metrics(scores, seen, relevant, k=4)
    got = ranked_list_metrics(lists, relevant, k=4)
    assert got.keys() == expected.keys()
    for name, value in expected.items():
        assert got[name] == pytest.approx(value, abs=1e-6)


def test_the_table_renders_as_text_markdown_and_json() -> None:
    def metrics(ndcg: float) -> dict[str, float]:
        return {"ndcg@10": ndcg, "ndcg@10_se": 0.01, "hr@10": 2 * ndcg, "hr@10_se": 0.02, "recall@10": ndcg}

    results = {
        "protocols": {
            "a": {
                "models": {
                    "recsys default": metrics(0.12),
                    "EASE": metrics(0.07),
                    "SASRec ref": metrics(0.1),
                },
                "training": {
                    "recsys default": {"wall_seconds": 66.6, "samples_per_second": 36427.0},
                    "EASE": {"wall_seconds": 2.0, "samples_per_second": None},
                    "SASRec ref": {"wall_seconds": 150.0, "samples_per_second": 5000.0},
                },
            },
            "cold": {"models": {"recsys default": metrics(0.2), "EASE": metrics(0.15)}, "training": {}},
        }
    }
    rows = table_rows(results)
    assert [row["model"] for row in rows] == ["EASE", "SASRec ref", "recsys default"]
    text = format_table(rows)
    assert "0.1200 ± 0.0100" in text and "36,427" in text and "66.6" in text
    assert "n/a" in text  # protocol B was not run; SASRec has no cold figure
    markdown = format_markdown(rows).splitlines()
    assert markdown[0].startswith("| model | A NDCG@10")
    assert markdown[1].startswith("|---|")
    assert len(markdown) == 2 + len(rows)
    assert all(line.count("|") == markdown[0].count("|") for line in markdown)
    assert json.loads(json.dumps(rows))[2]["cold_ndcg"] == pytest.approx(0.2)
