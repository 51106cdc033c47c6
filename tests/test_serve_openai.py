"""OpenAI's own Python client, pointed at genforge serve, works unchanged: models, image generation
and its typed errors. The client talks to the app through Starlette's TestClient (an httpx.Client)."""
from __future__ import annotations

import base64

import pytest
from serve_helpers import expected_pngs, keys, one_thread, png_size, runs, settings  # noqa: F401

openai = pytest.importorskip("openai")
from fastapi.testclient import TestClient  # noqa: E402

from genforge.serve import create_app  # noqa: E402


@pytest.fixture
def app_client(tmp_path, runs, keys):
    with TestClient(create_app(settings(tmp_path, runs, keys, models=("gan", "cgan", "clf"),
                                        rate_limit=1.0, rate_burst=4))) as c:
        yield c


def make(c, key: str) -> "openai.OpenAI":
    # max_retries=0: the client would otherwise retry 429s after Retry-After, hiding them from the test
    return openai.OpenAI(api_key=key, base_url="http://testserver/v1", http_client=c, max_retries=0)


def test_openai_client_lists_models_and_generates(app_client, keys, runs):
    client = make(app_client, keys["gen"])
    ids = {m.id for m in client.models.list()}
    assert ids == {"tiny-gan", "tiny-cgan", "tiny-clf"}

    r = client.images.generate(model="tiny-gan", prompt="anything", n=2, size="16x16",
                               response_format="b64_json", extra_body={"seed": 7})
    assert len(r.data) == 2 and r.created > 0
    assert [d.b64_json for d in r.data] == expected_pngs(runs["gan"], 2, 7)
    assert png_size(r.data[0].b64_json) == (16, 16)

    # a class-conditional model takes a class name as its prompt
    r = client.images.generate(model="tiny-cgan", prompt="triangle", n=1, extra_body={"seed": 1})
    assert [d.b64_json for d in r.data] == expected_pngs(runs["cgan"], 1, 1, labels=["2"])
    assert base64.b64decode(r.data[0].b64_json)[:4] == b"\x89PNG"


def test_openai_client_typed_errors(app_client, keys):
    bad = make(app_client, "gf_nothere_secret")
    with pytest.raises(openai.AuthenticationError) as e:
        bad.models.list()
    assert e.value.status_code == 401 and "key" in e.value.message

    with pytest.raises(openai.PermissionDeniedError) as e:
        make(app_client, keys["clf"]).images.generate(model="tiny-gan", prompt="x")
    assert "generate" in e.value.message

    client = make(app_client, keys["both"])
    with pytest.raises(openai.NotFoundError) as e:
        client.images.generate(model="../../etc/passwd", prompt="x")
    assert e.value.code == "model_not_found" and e.value.param == "model"

    with pytest.raises(openai.UnprocessableEntityError) as e:
        client.images.generate(model="tiny-gan", prompt="x", size="1024x1024")
    assert e.value.param == "size" and "16x16" in e.value.message

    with pytest.raises(openai.UnprocessableEntityError) as e:
        client.images.generate(model="tiny-cgan", prompt="hexagon")
    assert e.value.param == "prompt" and "circle, square, triangle" in e.value.message

    with pytest.raises(openai.RateLimitError) as e:
        for _ in range(10):
            client.models.list()
    assert int(e.value.response.headers["retry-after"]) >= 1
