"""Losses: finite scalars with gradients, collisions in sampled softmax, and a loss that goes down."""

from __future__ import annotations

import math
from typing import cast

import pytest
import torch

from recsys.models.ncf import NCF, ModelConfig
from recsys.training.batches import Batch
from recsys.training.losses import LossKind, TrainingObjective, compute_loss, sample_negatives

LOSSES: list[LossKind] = ["bce", "softmax", "sampled_softmax"]
LEARNING_RATE = 1.0


def _model(kind: str, num_items: int = 6, seed: int = 0) -> NCF:
    torch.manual_seed(seed)
    config = ModelConfig(
        kind=kind,  # type: ignore[arg-type]
        num_users=4,
        num_items=num_items,
        embedding_dim=4,
        mlp_layers=(8, 4),
        dropout=0.0,
        history_length=2,
    )
    return NCF(config)


def _batch(num_items: int = 6) -> Batch:
    users = torch.tensor([0, 1, 2, 3])
    positives = torch.tensor([0, 1, 2, 3]) % num_items
    history = torch.tensor([[1, 0], [0, 0], [3, 2], [0, 0]]) % num_items
    mask = torch.tensor([[True, False], [False, False], [True, True], [False, False]])
    return Batch(users, positives, history, mask)


def _loss(
    model: NCF, batch: Batch, *, loss: LossKind, num_negatives: int, generator: torch.Generator
) -> torch.Tensor:
    negatives = sample_negatives(
        loss,
        batch_size=batch.positives.shape[0],
        num_items=model.config.num_items,
        num_negatives=num_negatives,
        generator=generator,
    )
    return compute_loss(model, batch, loss=loss, negatives=negatives)


@pytest.mark.parametrize("loss", ["bce", "sampled_softmax"])
def test_the_objective_module_computes_the_same_loss_and_needs_its_negatives(loss: LossKind) -> None:
    model = _model("gmf")
    batch = _batch()
    negatives = sample_negatives(
        loss, batch_size=4, num_items=model.config.num_items, num_negatives=3, generator=torch.Generator()
    )
    objective = TrainingObjective(model, loss)
    with torch.no_grad():
        assert float(objective(batch, negatives)) == float(
            compute_loss(model, batch, loss=loss, negatives=negatives)
        )
    with pytest.raises(ValueError, match="needs sampled negatives"):
        objective(batch, None)


@pytest.mark.parametrize("kind", ["gmf", "mlp", "neumf"])
@pytest.mark.parametrize("loss", LOSSES)
def test_each_loss_is_a_finite_scalar_whose_gradient_reaches_the_embeddings(
    kind: str, loss: LossKind
) -> None:
    model = _model(kind)
    value = _loss(
        model,
        _batch(),
        loss=loss,
        num_negatives=3,
        generator=torch.Generator().manual_seed(0),
    )
    assert value.shape == ()
    assert torch.isfinite(value)
    value.backward()  # type: ignore[no-untyped-call]
    encoder = model.gmf_encoder or model.mlp_encoder
    assert encoder is not None and encoder.user_ids is not None and encoder.history is not None
    for embedding in (encoder.item_ids, encoder.user_ids, encoder.history.items):
        assert embedding.weight.grad is not None
        assert embedding.weight.grad.abs().sum() > 0


def test_an_unknown_loss_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown loss"):
        _loss(
            _model("gmf"),
            _batch(),
            loss=cast(LossKind, "hinge"),
            num_negatives=1,
            generator=torch.Generator(),
        )


def test_sampled_softmax_ignores_negatives_equal_to_the_positive() -> None:
    # Two items and eight shared negatives: most rows' positives are drawn as negatives too.
    num_items, num_negatives, seed = 2, 8, 5
    model = _model("gmf", num_items=num_items)
    batch = _batch(num_items)
    value = _loss(
        model,
        batch,
        loss="sampled_softmax",
        num_negatives=num_negatives,
        generator=torch.Generator().manual_seed(seed),
    )
    assert torch.isfinite(value)
    value.backward()  # type: ignore[no-untyped-call]
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)

    # By hand: each positive against the shared negatives that are a different item.
    negatives = torch.randint(num_items, (num_negatives,), generator=torch.Generator().manual_seed(seed))
    assert 0 < int((negatives == 0).sum()) < num_negatives  # collisions happen, for both items
    with torch.no_grad():
        state = model.encode_users(batch.users, batch.history, batch.history_mask)
        scores = model.score_all(state, model.all_items(torch.device("cpu")))
    expected = 0.0
    for row, positive in enumerate(batch.positives.tolist()):
        others = [float(scores[row, n]) for n in negatives.tolist() if n != positive]
        pos = float(scores[row, positive])
        expected += -pos + math.log(math.exp(pos) + sum(math.exp(s) for s in others))
    assert value.item() == pytest.approx(expected / batch.users.shape[0], rel=1e-5)


def test_sampled_softmax_with_only_colliding_negatives_is_zero_not_nan() -> None:
    model = _model("neumf", num_items=1)
    value = _loss(
        model, _batch(1), loss="sampled_softmax", num_negatives=4, generator=torch.Generator().manual_seed(0)
    )
    assert value.item() == 0.0
    value.backward()  # type: ignore[no-untyped-call]
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_bce_matches_a_hand_computation_over_its_own_negatives() -> None:
    model = _model("gmf")
    batch = _batch()
    value = _loss(model, batch, loss="bce", num_negatives=3, generator=torch.Generator().manual_seed(2))
    negatives = torch.randint(6, (4, 3), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        state = model.encode_users(batch.users, batch.history, batch.history_mask)
        scores = model.score_all(state, model.all_items(torch.device("cpu")))
    total = 0.0
    for row, positive in enumerate(batch.positives.tolist()):
        total += math.log1p(math.exp(-float(scores[row, positive])))
        total += sum(math.log1p(math.exp(float(scores[row, n]))) for n in negatives[row].tolist())
    assert value.item() == pytest.approx(total / 16, rel=1e-5)


def test_softmax_equals_cross_entropy_over_the_whole_catalogue() -> None:
    model = _model("mlp")
    batch = _batch()
    value = _loss(model, batch, loss="softmax", num_negatives=0, generator=torch.Generator())
    with torch.no_grad():
        state = model.encode_users(batch.users, batch.history, batch.history_mask)
        scores = model.score_all(state, model.all_items(torch.device("cpu")))
    expected = (torch.logsumexp(scores, 1) - scores.gather(1, batch.positives[:, None]).squeeze(1)).mean()
    assert value.item() == pytest.approx(float(expected), rel=1e-5)
    assert value.item() == pytest.approx(math.log(6), abs=0.05)  # near-uniform scores at initialisation


def _full_softmax_loss(model: NCF, batch: Batch) -> float:
    with torch.no_grad():
        return float(_loss(model, batch, loss="softmax", num_negatives=0, generator=torch.Generator()))


@pytest.mark.parametrize("loss", LOSSES)
def test_a_few_steps_reduce_the_loss(loss: LossKind) -> None:
    model = _model("neumf")
    batch = _batch()
    before = _full_softmax_loss(model, batch)
    values = []
    for step in range(10):
        generator = torch.Generator().manual_seed(step)
        value = _loss(model, batch, loss=loss, num_negatives=4, generator=generator)
        model.zero_grad(set_to_none=True)
        value.backward()  # type: ignore[no-untyped-call]
        with torch.no_grad():  # plain SGD by hand: torch.optim's first step costs seconds of imports
            for parameter in model.parameters():
                if parameter.grad is not None:
                    parameter.sub_(LEARNING_RATE * parameter.grad)
        values.append(value.item())
    assert values[-1] < values[0]
    # Whatever the loss, the positives climb the full ranking.
    assert _full_softmax_loss(model, batch) < before - 0.05


def _gradients(model: NCF, value: torch.Tensor) -> list[torch.Tensor]:
    parameters = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(value, parameters, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(parameters, grads, strict=True)]


@pytest.mark.parametrize("loss", LOSSES)
def test_an_event_weight_counts_a_positive_that_many_times(loss: LossKind) -> None:
    # event_weights {"purchase": 3}: row 0 (a purchase) weighs 3, the others 1. The weighted loss
    # and its gradient must be those of a batch holding row 0 three times, unweighted.
    model = _model("neumf")
    # Away from the near-uniform initialisation, so that the rows' losses differ.
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0.0, 0.5, generator=generator)
    batch = _batch()
    weighted = Batch(
        batch.users, batch.positives, batch.history, batch.history_mask, weights=torch.tensor([3.0, 1, 1, 1])
    )
    copies = torch.tensor([0, 0, 0, 1, 2, 3])
    repeated = Batch(
        batch.users[copies], batch.positives[copies], batch.history[copies], batch.history_mask[copies]
    )
    negatives = sample_negatives(
        loss,
        batch_size=4,
        num_items=model.config.num_items,
        num_negatives=3,
        generator=torch.Generator().manual_seed(1),
    )
    # bce draws each row's own negatives: a copy of a row keeps them.
    repeated_negatives = negatives[copies] if loss == "bce" and negatives is not None else negatives

    value = compute_loss(model, weighted, loss=loss, negatives=negatives)
    expected = compute_loss(model, repeated, loss=loss, negatives=repeated_negatives)
    plain = compute_loss(model, batch, loss=loss, negatives=negatives)

    assert value.item() == pytest.approx(expected.item(), rel=1e-5)
    assert abs(value.item() - plain.item()) > 1e-4  # the weight changed something
    for got, want in zip(_gradients(model, value), _gradients(model, expected), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-7)


def test_event_weights_are_relative_and_a_zero_weight_drops_the_positive() -> None:
    model = _model("gmf")
    batch = _batch()

    def softmax(weights: list[float] | None, rows: tuple[int, ...] = (0, 1, 2, 3)) -> float:
        index = torch.tensor(rows)
        chosen = Batch(
            batch.users[index],
            batch.positives[index],
            batch.history[index],
            batch.history_mask[index],
            weights=torch.tensor(weights) if weights is not None else None,
        )
        with torch.no_grad():
            return float(compute_loss(model, chosen, loss="softmax", negatives=None))

    # A weighted mean: doubling every weight changes nothing; unit weights are no weights.
    assert softmax([2.0, 2, 2, 2]) == pytest.approx(softmax(None), rel=1e-6)
    assert softmax([3.0, 1, 1, 1]) == pytest.approx(softmax([6.0, 2, 2, 2]), rel=1e-6)
    assert softmax([0.0, 1, 1, 1]) == pytest.approx(softmax(None, (1, 2, 3)), rel=1e-6)
