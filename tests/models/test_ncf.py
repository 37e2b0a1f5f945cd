"""NCF (GMF / MLP / NeuMF) shapes, scoring paths that must agree, config and weight round trips."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from recsys.data.features import FeatureArrays
from recsys.models.ncf import NCF, AttributeTower, AttributeValues, FeatureSpec, ModelConfig

NUM_USERS, NUM_ITEMS, DIM, LENGTH = 5, 7, 8, 4
KINDS = ["gmf", "mlp", "neumf"]
ITEM_FEATURES = FeatureSpec(NUM_ITEMS, categorical=((4, 1), (3, 2)), num_numeric=2)
USER_FEATURES = FeatureSpec(NUM_USERS, categorical=((3, 1),), num_numeric=1)


def _config(kind: str, *, features: bool = False, history: bool = True, user_id: bool = True) -> ModelConfig:
    return ModelConfig(
        kind=kind,  # type: ignore[arg-type]
        num_users=NUM_USERS,
        num_items=NUM_ITEMS,
        embedding_dim=DIM,
        mlp_layers=(16, 8),
        dropout=0.2,
        use_user_id=user_id,
        use_history=history,
        history_length=LENGTH,
        item_features=ITEM_FEATURES if features else FeatureSpec(),
        user_features=USER_FEATURES if features else FeatureSpec(),
    )


def _model(config: ModelConfig, seed: int = 0) -> NCF:
    """A model in eval mode with random attribute codes loaded into its towers."""
    torch.manual_seed(seed)
    model = NCF(config)

    def random_arrays(spec: FeatureSpec) -> FeatureArrays:
        codes = tuple(torch.randint(card, (spec.num_rows, width)).numpy() for card, width in spec.categorical)
        numeric = torch.randn(spec.num_rows, spec.num_numeric).numpy()
        return FeatureArrays(codes, numeric, numeric.astype("float64"))

    model.load_attributes(random_arrays(ITEM_FEATURES), random_arrays(USER_FEATURES))
    # Non-zero item biases, so a path that forgets the bias shows up.
    torch.nn.init.normal_(model.item_bias.weight)
    return model.eval()


def _inputs(batch: int = 3) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    users = torch.tensor([0, NUM_USERS - 1, NUM_USERS][:batch])  # the last is the unknown user
    history = torch.randint(NUM_ITEMS, (batch, LENGTH), generator=generator)
    mask = torch.tensor([[True, True, False, False], [True, True, True, True], [True, False, False, False]])
    return users, history * mask, mask


CASES = [
    pytest.param(kind, features, history, id=f"{kind}-features{int(features)}-history{int(history)}")
    for kind in KINDS
    for features in (False, True)
    for history in (False, True)
]


@pytest.mark.parametrize(("kind", "features", "history"), CASES)
def test_shapes_and_scoring_paths_agree(kind: str, features: bool, history: bool) -> None:
    model = _model(_config(kind, features=features, history=history))
    users, hist, mask = _inputs()
    candidates = torch.tensor([[0, 1], [6, 6], [3, 2]])
    with torch.no_grad():
        logits = model(users, hist, mask, candidates)
        state = model.encode_users(users, hist, mask)
        every = model.score_all(state, model.all_items(torch.device("cpu")))
        every_small_chunks = model.score_all(state, model.all_items(torch.device("cpu")), chunk=3)
        as_candidates = model.score_candidates(
            state, model.encode_items(torch.arange(NUM_ITEMS).expand(users.shape[0], -1))
        )
    assert logits.shape == (3, 2)
    assert every.shape == (3, NUM_ITEMS)
    assert torch.isfinite(every).all()
    torch.testing.assert_close(every, as_candidates)
    torch.testing.assert_close(every, every_small_chunks)
    torch.testing.assert_close(logits, every.gather(1, candidates))
    # Different users get different scores (the model is not ignoring its input).
    assert not torch.allclose(every[0], every[1])


@pytest.mark.parametrize("kind", KINDS)
def test_training_mode_gives_logits_with_gradients(kind: str) -> None:
    model = _model(_config(kind, features=True)).train()
    users, hist, mask = _inputs()
    logits = model(users, hist, mask, torch.tensor([[0, 1], [2, 3], [4, 5]]))
    logits.sum().backward()
    assert logits.shape == (3, 2)
    encoder = model.gmf_encoder or model.mlp_encoder
    assert encoder is not None and encoder.item_ids.weight.grad is not None
    assert encoder.item_ids.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("kind", KINDS)
def test_the_unknown_user_row_is_its_own_embedding(kind: str) -> None:
    model = _model(_config(kind, features=True, history=False))
    no_history = torch.zeros(2, LENGTH, dtype=torch.long)
    no_mask = torch.zeros(2, LENGTH, dtype=torch.bool)
    with torch.no_grad():
        logits = model(
            torch.tensor([NUM_USERS, 0]), no_history, no_mask, torch.arange(NUM_ITEMS).repeat(2, 1)
        )
    assert torch.isfinite(logits).all()
    assert not torch.allclose(logits[0], logits[1])


@pytest.mark.parametrize("kind", KINDS)
def test_a_history_only_model_ignores_the_user_id(kind: str) -> None:
    model = _model(_config(kind, user_id=False))
    users, hist, mask = _inputs()
    same_history = hist[1:2].expand(3, -1)
    same_mask = mask[1:2].expand(3, -1)
    candidates = torch.arange(NUM_ITEMS).repeat(3, 1)
    with torch.no_grad():
        logits = model(users, same_history, same_mask, candidates)
        other_history = model(users[:1], hist[:1], mask[:1], candidates[:1])
    torch.testing.assert_close(logits[0], logits[1])
    torch.testing.assert_close(logits[0], logits[2])
    assert not torch.allclose(logits[0], other_history[0])  # the history does matter


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("user_id", [False, True])
def test_an_empty_history_still_gives_finite_logits(kind: str, user_id: bool) -> None:
    model = _model(_config(kind, user_id=user_id))
    history = torch.zeros(2, LENGTH, dtype=torch.long)
    mask = torch.zeros(2, LENGTH, dtype=torch.bool)
    with torch.no_grad():
        state = model.encode_users(torch.tensor([NUM_USERS, 1]), history, mask)
        logits = model.score_all(state, model.all_items(torch.device("cpu")))
    assert logits.shape == (2, NUM_ITEMS)
    assert torch.isfinite(logits).all()


def test_the_history_pool_puts_most_weight_on_the_most_recent_item() -> None:
    model = _model(_config("gmf", user_id=False))
    assert model.gmf_encoder is not None and model.gmf_encoder.history is not None
    pool = model.gmf_encoder.history
    with torch.no_grad():
        pool.items.weight.zero_()
        pool.items.weight[1, 0] = 1.0  # item 1 is the only one with a non-zero embedding
        mask = torch.ones(2, 3, dtype=torch.bool)
        pooled = pool(torch.tensor([[1, 2, 3], [2, 3, 1]]), mask)
    # Same items, but item 1 is the most recent in the first row and the oldest in the second.
    weights = torch.exp(-0.05 * torch.arange(3.0))
    weights = weights / weights.sum()
    torch.testing.assert_close(pooled[:, 0], torch.stack([weights[0], weights[2]]))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"kind": "svd"}, "kind"),
        ({"num_users": 0}, "at least one user"),
        ({"num_items": 0}, "at least one user"),
        ({"embedding_dim": 0}, "embedding_dim"),
        ({"use_user_id": False, "use_history": False}, "id embedding, a history"),
        ({"kind": "mlp", "mlp_layers": ()}, "mlp_layers"),
        ({"kind": "neumf", "mlp_layers": ()}, "mlp_layers"),
    ],
)
def test_model_config_validation(changes: dict[str, object], message: str) -> None:
    raw = _config("gmf").to_json() | changes
    raw.pop("item_features"), raw.pop("user_features")
    with pytest.raises(ValueError, match=message):
        ModelConfig(**raw)  # type: ignore[arg-type]


def test_gmf_without_mlp_layers_is_valid() -> None:
    config = ModelConfig(kind="gmf", num_users=1, num_items=1, mlp_layers=())
    assert NCF(config).mlp_encoder is None


@pytest.mark.parametrize("kind", KINDS)
def test_model_config_json_round_trip(kind: str) -> None:
    config = _config(kind, features=True)
    assert ModelConfig.from_json(json.loads(config.dumps())) == config
    assert ModelConfig.from_json(json.loads(json.dumps(config.to_json()))) == config


@pytest.mark.parametrize("kind", KINDS)
def test_state_dict_and_config_rebuild_an_identical_model(kind: str, tmp_path: Path) -> None:
    model = _model(_config(kind, features=True))
    torch.save(model.state_dict(), tmp_path / "model.pt")
    (tmp_path / "model_config.json").write_text(model.config.dumps(), encoding="utf-8")

    config = ModelConfig.from_json(json.loads((tmp_path / "model_config.json").read_text(encoding="utf-8")))
    rebuilt = NCF(config)
    rebuilt.load_state_dict(torch.load(tmp_path / "model.pt", weights_only=True))
    rebuilt.eval()

    users, hist, mask = _inputs()
    candidates = torch.arange(NUM_ITEMS).repeat(3, 1)
    with torch.no_grad():
        assert torch.equal(model(users, hist, mask, candidates), rebuilt(users, hist, mask, candidates))


def test_fuse_pretrained_takes_each_towers_weights_and_half_of_each_output() -> None:
    gmf, mlp = _model(_config("gmf"), seed=1), _model(_config("mlp"), seed=2)
    neumf = _model(_config("neumf"), seed=3)

    neumf.fuse_pretrained(gmf, mlp)

    fused = neumf.state_dict()
    for name, tensor in gmf.state_dict().items():
        if name.startswith("gmf_encoder."):
            assert torch.equal(fused[name], tensor), name
    for name, tensor in mlp.state_dict().items():
        if name.startswith(("mlp_encoder.", "mlp_user_in.", "mlp_item_in.", "mlp_hidden.")):
            assert torch.equal(fused[name], tensor), name
    assert torch.equal(fused["gmf_out"], 0.5 * gmf.state_dict()["gmf_out"])
    assert torch.equal(fused["mlp_out.weight"], 0.5 * mlp.state_dict()["mlp_out.weight"])
    expected_bias = 0.5 * (gmf.state_dict()["item_bias.weight"] + mlp.state_dict()["item_bias.weight"])
    assert torch.allclose(fused["item_bias.weight"], expected_bias)


def test_fuse_pretrained_refuses_models_of_the_wrong_kinds() -> None:
    gmf, neumf = _model(_config("gmf")), _model(_config("neumf"))
    with pytest.raises(ValueError, match="fuses a gmf and an mlp into a neumf"):
        neumf.fuse_pretrained(gmf, gmf)


def _zero_rows(vectors: torch.Tensor) -> float:
    return float((vectors.abs().sum(-1) == 0).float().mean())


def test_attribute_hiding_hides_each_column_of_each_row_at_rate_p() -> None:
    # One multi-valued column and one numeric column, every value present: a row's output is zero
    # exactly where training hid that column.
    rows, p = 4000, 0.3
    torch.manual_seed(0)
    tower = AttributeTower(FeatureSpec(rows, categorical=((5, 2),), num_numeric=0), DIM)
    numbers = AttributeTower(FeatureSpec(rows, categorical=(), num_numeric=1), DIM)
    codes = torch.randint(1, 5, (rows, 2))
    values = AttributeValues((codes,), torch.zeros(rows, 0))
    ones = AttributeValues((), torch.ones(rows, 1))

    shown = tower.embed(values)
    hidden = tower.embed(values, hide=p)

    assert _zero_rows(shown) == 0.0 and _zero_rows(numbers.embed(ones)) == 0.0
    assert 0.27 < _zero_rows(hidden) < 0.33
    assert 0.27 < _zero_rows(numbers.embed(ones, hide=p)) < 0.33
    # A multi-valued column is hidden whole: a row is either all there or all gone.
    kept = hidden.abs().sum(-1) > 0
    torch.testing.assert_close(hidden[kept], shown[kept])


def test_the_model_hides_user_attributes_at_feature_dropout_in_training_only() -> None:
    # User = attributes only (no id; an empty history pools to zero): its GMF vector is zero
    # exactly where the attributes were hidden.
    users, p = 2000, 0.25
    config = ModelConfig(
        kind="gmf",
        num_users=users,
        num_items=NUM_ITEMS,
        embedding_dim=DIM,
        dropout=0.0,
        use_user_id=False,
        history_length=LENGTH,
        user_features=FeatureSpec(users, categorical=((4, 1),), num_numeric=0),
        feature_dropout=p,
    )
    torch.manual_seed(0)
    model = NCF(config)
    codes = torch.randint(1, 4, (users, 1)).numpy()
    no_numbers = np.zeros((users, 0), dtype=np.float32)
    model.load_attributes(None, FeatureArrays((codes,), no_numbers, no_numbers.astype(np.float64)))
    index = torch.arange(users)
    empty = torch.zeros(users, LENGTH, dtype=torch.long)

    def zero_share() -> float:
        with torch.no_grad():
            state = model.encode_users(index, empty, empty.bool())
        assert state.gmf is not None
        return _zero_rows(state.gmf)

    model.train()
    assert 0.22 < zero_share() < 0.28
    model.eval()
    assert zero_share() == 0.0
