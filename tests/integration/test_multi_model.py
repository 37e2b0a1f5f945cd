"""A multi-model endpoint as SageMaker drives one: ``python -m recsys serve`` with
SAGEMAKER_MULTI_MODEL=true, models loaded, listed, described, invoked and unloaded over real HTTP
from /opt/ml/models/<name>/model directories, within a memory budget."""

from __future__ import annotations

import http.client
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from recsys.data.synthetic import SyntheticData
from recsys.serving.engine import Query, Recommender
from recsys.serving.models import footprint
from tests.integration.test_serve_http import Server, _start, _stop, _wait_ready
from tests.serving.trained_model import trained_tree

pytestmark = pytest.mark.slow


def _call(
    port: int, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        payload = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
        connection.request(
            method, path, body=payload, headers={"Content-Type": "application/json", **(headers or {})}
        )
        response = connection.getresponse()
        raw = response.read()
        return response.status, json.loads(raw) if raw else None
    finally:
        connection.close()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory, tiny_data: SyntheticData) -> Path:
    return trained_tree(tmp_path_factory, tiny_data) / "model"


@pytest.fixture(scope="module")
def server(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Path, int]]:
    base = tmp_path_factory.mktemp("mme_opt_ml")
    for name in ("fr", "de", "it"):
        shutil.copytree(model_dir, base / "models" / name / "model")
    size = footprint(Recommender.load(model_dir))
    # Room for two models, not three: the third load unloads the least recently used.
    budget_mb = 2.5 * size / 2**20
    logs = tmp_path_factory.mktemp("mme_logs")
    started = _start(
        base,
        logs / "mme.log",
        {"SAGEMAKER_MULTI_MODEL": "true", "RECSYS_MODEL_MEMORY_MB": f"{budget_mb:.6f}"},
    )
    try:
        _wait_ready(started)
        yield started, base, size
    finally:
        _stop(started)


def _url(base: Path, name: str) -> str:
    return str(base / "models" / name / "model")


def test_models_load_list_describe_invoke_and_unload_as_sagemaker_calls_them(
    server: tuple[Server, Path, int], model_dir: Path, tiny_data: SyntheticData
) -> None:
    running, base, _ = server
    port = running.port
    user = str(tiny_data.interactions["user_id"].iloc[0])

    assert _call(port, "POST", "/models", {"model_name": "fr", "url": _url(base, "fr")})[0] == 200
    assert _call(port, "POST", "/models", {"model_name": "fr", "url": _url(base, "fr")})[0] == 409
    status, described = _call(port, "GET", "/models/fr")
    assert (status, described) == (200, {"modelName": "fr", "modelUrl": _url(base, "fr")})

    status, answer = _call(
        port,
        "POST",
        "/models/fr/invoke",
        {"user_id": user, "k": 5},
        {"X-Amzn-SageMaker-Target-Model": "fr.tar.gz"},
    )
    assert status == 200, answer
    expected = Recommender.load(model_dir).recommend([Query(user_id=user, k=5)])[0]
    assert answer["predictions"][0]["item_ids"] == expected.item_ids
    # A bad request to a loaded model is that model's 400, named.
    status, answer = _call(port, "POST", "/models/fr/invoke", {"k": 0})
    assert status == 400 and "k" in answer["error"]

    assert _call(port, "POST", "/models", {"model_name": "de", "url": _url(base, "de")})[0] == 200
    assert _call(port, "POST", "/models/fr/invoke", {"user_id": user})[0] == 200  # fr is now the most recent
    # A third model does not fit: the least recently used (de) makes room.
    assert _call(port, "POST", "/models", {"model_name": "it", "url": _url(base, "it")})[0] == 200
    status, listed = _call(port, "GET", "/models")
    assert status == 200 and sorted(m["modelName"] for m in listed["models"]) == ["fr", "it"]
    status, answer = _call(port, "POST", "/models/de/invoke", {"user_id": user})
    assert status == 404 and "'de' is not loaded" in answer["error"]
    status, page = _call(port, "GET", "/models?page_size=1")
    assert len(page["models"]) == 1 and page["nextPageToken"] == "1"
    status, rest = _call(port, "GET", f"/models?page_size=1&next_page_token={page['nextPageToken']}")
    assert len(rest["models"]) == 1 and "nextPageToken" not in rest

    assert _call(port, "DELETE", "/models/it")[0] == 200
    assert _call(port, "DELETE", "/models/it")[0] == 404
    assert _call(port, "GET", "/models/it")[0] == 404
    # The single-model route says where to go instead.
    status, answer = _call(port, "POST", "/invocations", {"user_id": user})
    assert status == 404 and "/models/<name>/invoke" in answer["error"]
    assert "Traceback" not in running.log()


def test_a_model_larger_than_the_budget_is_507_and_a_bad_url_400(
    server: tuple[Server, Path, int], tmp_path: Path
) -> None:
    running, base, size = server
    port = running.port
    large = base / "models" / "big" / "model"
    large.mkdir(parents=True)
    (large / "padding.bin").write_bytes(b"\0" * int(3 * size))
    status, answer = _call(port, "POST", "/models", {"model_name": "big", "url": str(large)})
    assert status == 507 and "budget" in answer["error"]
    status, answer = _call(port, "POST", "/models", {"model_name": "x", "url": str(tmp_path / "nothing")})
    assert status == 400 and "not a directory" in answer["error"]
    empty = tmp_path / "empty"
    empty.mkdir()
    status, answer = _call(port, "POST", "/models", {"model_name": "x", "url": str(empty)})
    assert status == 400 and "'x'" in answer["error"]
    status, answer = _call(port, "POST", "/models", b"not json")
    assert status == 400
    assert _call(port, "GET", "/ping")[0] == 200
