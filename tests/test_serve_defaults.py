"""Requests that name no model: the server's default answers, as OpenAI's API allows."""
from __future__ import annotations

import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402
from serve_helpers import auth, keys, runs, settings  # noqa: E402,F401

from genforge.errors import GenforgeError  # noqa: E402
from genforge.serve import create_app  # noqa: E402


def test_generations_without_model_use_the_first_diffusion_model(tmp_path, runs, keys):
    with TestClient(create_app(settings(tmp_path, runs, keys))) as c:
        r = c.post("/v1/images/generations", json={"n": 1}, headers=auth(keys["gen"]))
        assert r.status_code == 200 and r.json()["model"] == "tiny-diffusion"


def test_default_model_option_wins(tmp_path, runs, keys):
    with TestClient(create_app(settings(tmp_path, runs, keys, default_model="tiny-cgan"))) as c:
        r = c.post("/v1/images/generations", json={"n": 1, "prompt": "square"}, headers=auth(keys["gen"]))
        assert r.status_code == 200 and r.json()["model"] == "tiny-cgan"
        r = c.post("/v1/samples", json={"n": 1}, headers=auth(keys["gen"]))
        assert r.status_code == 200 and r.json()["model"] == "tiny-cgan"


def test_no_model_of_the_kind_is_400_not_404(tmp_path, runs, keys):
    with TestClient(create_app(settings(tmp_path, runs, keys, models=("clf",)))) as c:
        r = c.post("/v1/images/generations", json={"n": 1}, headers=auth(keys["gen"]))
        assert r.status_code == 400
        err = r.json()["error"]
        assert err["param"] == "model" and err["code"] == "model_required" and "no image-generation" in err["message"]


def test_unknown_default_model_is_refused(tmp_path, runs, keys, cli):
    with pytest.raises(GenforgeError, match="not one of the served models"):
        with TestClient(create_app(settings(tmp_path, runs, keys, default_model="nope"))):
            pass
    code, out, err = cli("serve", runs["gan"], "--default-model", "nope")
    assert code == 2 and "--default-model 'nope' is not served; served models: tiny-gan" in err
