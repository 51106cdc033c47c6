"""Serving text models: text-to-image on OpenAI's images route (and as jobs), captions from uploads,
bad input, /v1/models, and OpenAI's own client. The runs are tiny models trained a few steps in this
session (tests/text_runs.py): answers are compared with the pipelines' own output."""
from __future__ import annotations

import asyncio
import base64
import io
import warnings

import numpy as np
import pytest

pytest.importorskip("fastapi")
import httpx  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402
from PIL import Image  # noqa: E402
from serve_helpers import auth, keys, one_thread, runs, settings, wait_job  # noqa: E402,F401
from text_runs import expected_b64, pipeline, text_runs  # noqa: E402,F401

from genforge.data.shapes import Obj, Scene, render  # noqa: E402
from genforge.serve import create_app  # noqa: E402

PROMPT = "a small red circle above a large blue square"


@pytest.fixture(scope="module")
def all_runs(runs, text_runs):
    return {**runs, **text_runs}


@pytest.fixture
def client(tmp_path, all_runs, keys):
    cfg = settings(tmp_path, all_runs, keys, models=("t2i", "textgan", "cap", "gan"),
                   max_body_bytes=64 * 1024, max_image_pixels=512 * 512)
    with TestClient(create_app(cfg)) as c:
        yield c


def _png(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def _scene() -> Image.Image:
    return render(Scene([Obj("circle", "red", "small", 0, 1), Obj("square", "blue", "large", 2, 1)]), size=16)


def _pixels(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64)))).astype(int)


def _close(got: list[str], want: list[str]) -> None:
    """Equal up to the order batched CPU kernels sum in: a rare one-level pixel difference."""
    a, b = np.stack([_pixels(x) for x in got]), np.stack([_pixels(x) for x in want])
    assert np.abs(a - b).max() <= 1 and (a != b).mean() < 0.01


def test_models_are_listed_with_their_kind(client, keys):
    listed = {m["id"]: m for m in client.get("/v1/models", headers=auth(keys["gen"])).json()["data"]}
    assert {k: m["kind"] for k, m in listed.items()} == {
        "t2i": "text-to-image", "textgan": "text-to-image", "cap": "image-captioning", "tiny-gan": "image-generation"}
    assert listed["t2i"]["size"] == "16x16" and listed["t2i"]["context"] == 12
    assert listed["t2i"]["default_steps"] == 3 and "dpm++" in listed["t2i"]["samplers"]
    assert listed["t2i"]["default_layout"] == "grid" and listed["textgan"]["default_layout"] == "off"
    assert listed["textgan"]["samplers"] == [] and listed["cap"]["max_length"] == 12


def test_prompt_generation_equals_the_pipeline(client, keys, all_runs):
    h = auth(keys["gen"])
    r = client.post("/v1/images/generations", json={"model": "t2i", "prompt": PROMPT, "n": 2, "seed": 5}, headers=h)
    assert r.status_code == 200, r.text
    body = r.json()
    assert [d["b64_json"] for d in body["data"]] == expected_b64(all_runs["t2i"], 2, 5, prompt=PROMPT)
    assert body["model"] == "t2i" and body["seed"] == 5
    # every extension field reaches the sampler
    req = {"steps": 2, "guidance": 2.0, "negative_prompt": "green", "sampler": "ddim"}
    r = client.post("/v1/images/generations", json={"model": "t2i", "prompt": PROMPT, "n": 2, "seed": 5, **req},
                    headers=h)
    got = [d["b64_json"] for d in r.json()["data"]]
    assert got == expected_b64(all_runs["t2i"], 2, 5, prompt=PROMPT, **req)
    assert got != [d["b64_json"] for d in body["data"]]
    # the model places a two-object prompt's objects itself with layout off (default here: planned)
    r = client.post("/v1/images/generations", json={"model": "t2i", "prompt": PROMPT, "n": 2, "seed": 5,
                                                    "layout": "off"}, headers=h)
    off = [d["b64_json"] for d in r.json()["data"]]
    assert off == expected_b64(all_runs["t2i"], 2, 5, prompt=PROMPT, layout="off")
    assert off != [d["b64_json"] for d in body["data"]]
    r = client.post("/v1/images/generations", json={"model": "textgan", "prompt": PROMPT, "n": 3, "seed": 1},
                    headers=h)
    assert [d["b64_json"] for d in r.json()["data"]] == expected_b64(all_runs["textgan"], 3, 1, prompt=PROMPT)
    # no model named: a text-to-image model answers a prompt; image models still answer by name
    r = client.post("/v1/images/generations", json={"prompt": PROMPT, "seed": 5}, headers=h)
    assert r.json()["model"] == "t2i"
    assert client.post("/v1/images/generations", json={"model": "tiny-gan", "prompt": "x"}, headers=h).status_code == 200


def test_prompt_problems_are_explained(client, keys, all_runs):
    h = auth(keys["gen"])

    def gen(**body):
        return client.post("/v1/images/generations", json={"model": "t2i", "seed": 0, **body}, headers=h)

    r = gen(prompt="")  # the pipeline's unconditional sample, and a note saying so
    assert r.status_code == 200 and any("unconditional" in w for w in r.json()["warnings"])
    assert [d["b64_json"] for d in r.json()["data"]] == expected_b64(all_runs["t2i"], 1, 0, prompt="")
    long = " ".join([PROMPT] * 6)  # far past the 12-token context
    r = gen(prompt=long)
    assert r.status_code == 200 and any("cut" in w for w in r.json()["warnings"])
    read = r.json()["data"][0]["revised_prompt"]
    assert read and len(read) < len(long) and long.lower().startswith(read.split(" ")[0])
    # what the response says the model read is what it read: that text alone makes the same image
    assert r.json()["data"][0]["b64_json"] == gen(prompt=read).json()["data"][0]["b64_json"]
    assert "revised_prompt" not in gen(prompt="a circle").json()["data"][0]
    r = gen(prompt="a zqxjv circle")
    assert any("zqxjv" in w for w in r.json()["warnings"])
    for bad in (3, ["a circle"], {"text": "a"}, "x" * 1001):
        r = gen(prompt=bad)
        assert r.status_code == 422 and r.json()["error"]["param"] == "prompt", r.text
    r = client.post("/v1/images/generations", json={"model": "textgan", "prompt": "  "}, headers=h)
    assert r.status_code == 422 and r.json()["error"]["param"] == "prompt" and "empty prompt" in r.text
    r = client.post("/v1/images/generations", json={"model": "textgan", "prompt": "a", "negative_prompt": "b"},
                    headers=h)
    assert r.status_code == 422 and "negative" in r.json()["error"]["message"]
    r = client.post("/v1/images/generations", json={"model": "tiny-gan", "negative_prompt": "b"}, headers=h)
    assert r.status_code == 422 and r.json()["error"]["param"] == "negative_prompt"
    r = client.post("/v1/images/generations", json={"model": "tiny-gan", "layout": "grid"}, headers=h)
    assert r.status_code == 422 and r.json()["error"]["param"] == "layout"
    r = client.post("/v1/images/generations", json={"model": "textgan", "prompt": "a", "layout": "grid"}, headers=h)
    assert r.status_code == 422 and "GAN" in r.json()["error"]["message"]
    r = gen(prompt="a", layout="boxes")
    assert r.status_code == 422 and r.json()["error"]["param"] == "layout"
    r = gen(prompt="a", size="32x32")
    assert r.status_code == 422 and r.json()["error"]["param"] == "size" and "16x16" in r.text
    r = gen(prompt="a", sampler="euler")
    assert r.status_code == 422 and r.json()["error"]["param"] == "sampler"
    assert gen(prompt="a circle").status_code == 200  # still serving


@pytest.mark.parametrize("model", ["t2i", "textgan"])
def test_different_prompts_share_one_forward_pass(tmp_path, all_runs, keys, model):
    app = create_app(settings(tmp_path, all_runs, keys, models=(model,), max_wait_ms=400, max_batch_size=16))
    reqs = [{"prompt": p, "n": n, "seed": s, "negative_prompt": neg}
            for p, n, s, neg in [(PROMPT, 1, 11, None), ("a green triangle", 3, 12, "red"), ("a circle", 2, 13, None),
                                 ("a large square on a grey background", 2, 14, None)]]
    if model == "t2i":
        reqs[2]["prompt"] = ""  # unconditional rows beside guided ones
    else:
        reqs[1]["negative_prompt"] = None  # a GAN takes none

    async def go():
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://serve.test") as c:
                rs = await asyncio.gather(*[c.post("/v1/images/generations", json={**r, "model": model},
                                                   headers=auth(keys["gen"])) for r in reqs])
                return [r.json() for r in rs]

    bodies = asyncio.run(go())
    metrics = app.state.metrics.render().decode()
    count = [ln for ln in metrics.splitlines() if ln.startswith(f'genforge_batch_requests_count{{model="{model}"}}')]
    assert count and float(count[0].split()[-1]) < len(reqs)  # some forward pass served several prompts
    for req, body in zip(reqs, bodies):
        kw = {k: v for k, v in req.items() if k in ("prompt", "negative_prompt") and v is not None}
        _close([d["b64_json"] for d in body["data"]], expected_b64(all_runs[model], req["n"], req["seed"], **kw))


def test_text2image_jobs(client, keys, all_runs):
    h = auth(keys["gen"])
    r = client.post("/v1/jobs", json={"type": "text2image",
                                      "params": {"model": "t2i", "prompt": PROMPT, "n": 3, "seed": 2}}, headers=h)
    assert r.status_code == 202, r.text
    job = wait_job(client, r.json()["id"], keys["gen"])
    assert job["status"] == "succeeded", job
    assert job["result"]["images"] == expected_b64(all_runs["t2i"], 3, 2, prompt=PROMPT)
    assert job["result"]["prompt"] == PROMPT and job["params"]["steps"] == 3  # the model's default, fixed
    r = client.post("/v1/jobs", json={"type": "text2image",
                                      "params": {"model": "textgan", "prompt": PROMPT, "n": 2, "seed": 3}}, headers=h)
    job = wait_job(client, r.json()["id"], keys["gen"])
    assert job["status"] == "succeeded", job
    assert job["result"]["images"] == expected_b64(all_runs["textgan"], 2, 3, prompt=PROMPT)
    r = client.post("/v1/jobs", json={"type": "text2image", "params": {"model": "tiny-gan", "prompt": "a"}},
                    headers=h)
    assert r.status_code == 404 and r.json()["error"]["param"] == "model"
    r = client.post("/v1/jobs", json={"type": "samples", "params": {"model": "tiny-gan", "prompt": "a"}}, headers=h)
    assert r.status_code == 422 and r.json()["error"]["param"] == "params.prompt"
    r = client.post("/v1/jobs", json={"type": "text2image", "params": {"model": "textgan", "prompt": ""}}, headers=h)
    assert r.status_code == 422 and r.json()["error"]["param"] == "params.prompt"


def test_caption_upload(client, keys, all_runs):
    h = auth(keys["clf"])
    scene = _scene()
    pipe = pipeline(all_runs["cap"])

    def post(data: bytes, **form):
        return client.post("/v1/images/captions", files={"image": ("x.png", data, "image/png")},
                           data={k: str(v) for k, v in form.items()}, headers=h)

    r = post(_png(scene))
    assert r.status_code == 200, r.text
    assert r.json() == {"model": "cap", "caption": pipe.caption([scene])[0], "beam": 1}
    r = post(_png(scene), beam=3, model="cap")
    assert r.json()["caption"] == pipe.caption([scene], beam=3)[0] and r.json()["beam"] == 3
    # any image mode is converted as the pipeline converts it
    for mode in ("L", "RGBA", "P"):
        im = scene.convert(mode)
        assert post(_png(im)).json()["caption"] == pipe.caption([im])[0]
    assert post(_png(scene.resize((64, 48)))).json()["caption"] == pipe.caption([scene.resize((64, 48))])[0]


def test_caption_bad_uploads_are_4xx_and_the_server_keeps_serving(client, keys):
    h = auth(keys["clf"])

    def post(name: str, data: bytes, **form):
        return client.post("/v1/images/captions", files={"image": (name, data, "image/png")},
                           data={k: str(v) for k, v in form.items()}, headers=h)

    cases = [
        (post("a.txt", b"hello, not an image"), 400, "invalid_image"),
        (post("a.png", _png(Image.new("RGB", (1, 1)))), 400, "image_too_small"),
        (post("a.png", _png(Image.new("L", (1024, 1024)))), 413, "image_too_large"),
        (post("a.png", np.random.default_rng(0).bytes(100_000)), 413, "body_too_large"),
        (post("a.png", b""), 400, "invalid_image"),
        (post("a.png", _png(_scene()), beam=0), 422, None),
        (post("a.png", _png(_scene()), beam=17), 422, None),
        (post("a.png", _png(_scene()), model="t2i"), 404, "model_not_found"),
        (client.post("/v1/images/captions", data={"beam": "1"}, headers=h), 422, None),
    ]
    for r, status, code in cases:
        assert r.status_code == status, r.text
        assert r.json()["error"]["message"]
        if code:
            assert r.json()["error"]["code"] == code
    r = client.post("/v1/images/captions", files={"image": ("a.png", _png(_scene()), "image/png")},
                    headers=auth(keys["gen"]))
    assert r.status_code == 403 and "classify" in r.json()["error"]["message"]
    assert post("a.png", _png(_scene())).status_code == 200


def test_openai_client_generates_from_a_prompt(client, keys, all_runs):
    openai = pytest.importorskip("openai")
    oc = openai.OpenAI(api_key=keys["gen"], base_url="http://testserver/v1", http_client=client, max_retries=0)
    r = oc.images.generate(model="t2i", prompt=PROMPT, n=2, size="16x16", extra_body={"seed": 4})
    assert [d.b64_json for d in r.data] == expected_b64(all_runs["t2i"], 2, 4, prompt=PROMPT)
    r = oc.images.generate(model="t2i", prompt=" ".join([PROMPT] * 6), extra_body={"seed": 4})
    assert r.data[0].revised_prompt and len(r.data[0].revised_prompt) < 100
    with pytest.raises(openai.UnprocessableEntityError) as e:
        oc.images.generate(model="textgan", prompt="")
    assert e.value.param == "prompt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want = expected_b64(all_runs["textgan"], 1, 9, prompt="a blue square")
    assert oc.images.generate(model="textgan", prompt="a blue square", extra_body={"seed": 9}).data[0].b64_json == want[0]
