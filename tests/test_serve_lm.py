"""Serving language models: OpenAI's completions and chat routes (OpenAI's own client, streaming
included), continuous batching (concurrent requests get the texts the pipeline writes alone), bad
input, a client leaving mid-stream, and translations. The model is a tiny GPT trained a few steps in
this session (tests/text_runs.py); answers are compared with ``LMPipeline.generate``."""
from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

pytest.importorskip("fastapi")
openai = pytest.importorskip("openai")
import httpx  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402
from serve_helpers import auth, free_port, one_thread, settings  # noqa: E402,F401
from text_runs import lm_run, pipeline, translate_run  # noqa: E402,F401

from genforge.serve import create_app  # noqa: E402
from genforge.serve.auth import KeyStore  # noqa: E402
from genforge.serve.lm_routes import CHAT_STOPS, ChatMessage, render_chat  # noqa: E402

MODEL = "tiny-lm"


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    path = tmp_path_factory.mktemp("keys") / "keys.json"
    store, out = KeyStore(path), {"path": path}
    for name, scopes in [("text", "text"), ("gen", "generate")]:
        out[name] = store.create(name, scopes)[1]
    return out


def _settings(tmp_path, lm_run, keys, **kw):
    return settings(tmp_path, {"lm": lm_run}, keys, models=("lm",), rate_limit=0, **kw)


@pytest.fixture
def client(tmp_path, lm_run, keys):
    with TestClient(create_app(_settings(tmp_path, lm_run, keys))) as c:
        yield c


def make(c, key: str) -> "openai.OpenAI":
    return openai.OpenAI(api_key=key, base_url="http://testserver/v1", http_client=c, max_retries=0)


def expected(lm_run, prompt: str, max_tokens: int, temperature: float = 0.0, seed: int = 0, stop=None) -> str:
    return pipeline(lm_run).generate(prompt, max_tokens=max_tokens, temperature=temperature, top_k=0,
                                     top_p=1.0, stop=stop, seed=seed)


def test_completions_equal_the_pipeline_streamed_or_not(client, keys, lm_run):
    oc = make(client, keys["text"])
    r = oc.completions.create(model=MODEL, prompt="User: say alpha", max_tokens=30, temperature=0.9, seed=3)
    want = expected(lm_run, "User: say alpha", 30, 0.9, 3)
    assert r.choices[0].text == want and len(want) > 0
    assert r.choices[0].finish_reason == "length" and r.model == MODEL
    # a character model: one token per character
    assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens) == (15, 30, 45)

    chunks = list(oc.completions.create(model=MODEL, prompt="User: say alpha", max_tokens=30, temperature=0.9,
                                        seed=3, stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == want
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage.completion_tokens == 30 and not chunks[-1].choices

    # greedy, a stop string, and the raw event stream ends with [DONE]
    greedy = expected(lm_run, "Assistant:", 40)
    stop = greedy[5:7]
    r = client.post("/v1/completions", headers=auth(keys["text"]), json={
        "model": MODEL, "prompt": "Assistant:", "max_tokens": 40, "temperature": 0, "stop": stop, "stream": True})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    lines = [x for x in r.text.split("\n\n") if x]
    assert lines[-1] == "data: [DONE]" and all(x.startswith("data: ") for x in lines)
    events = [json.loads(x[6:]) for x in lines[:-1]]
    assert "".join(e["choices"][0]["text"] for e in events) == greedy[:greedy.find(stop)]
    assert events[-1]["choices"][0]["finish_reason"] == "stop"


def test_chat_renders_the_template_and_stops_at_the_next_turn(client, keys, lm_run):
    oc = make(client, keys["text"])
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "say beta"}]
    prompt = render_chat([ChatMessage(**m) for m in messages])
    assert prompt == "System: be brief\nUser: say beta\nAssistant:"
    want = expected(lm_run, prompt, 20, stop=list(CHAT_STOPS)).lstrip()
    r = oc.chat.completions.create(model=MODEL, messages=messages, max_tokens=20, temperature=0)
    assert r.choices[0].message.content == want and r.choices[0].message.role == "assistant"
    assert r.usage.prompt_tokens == len(prompt)
    chunks = list(oc.chat.completions.create(model=MODEL, messages=messages, max_tokens=20, temperature=0,
                                             stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == want
    assert chunks[-1].choices[0].finish_reason == r.choices[0].finish_reason


def test_concurrent_requests_share_steps_and_get_the_same_texts(client, keys, lm_run):
    served = client.app.state.serve["models"].by_id[MODEL]
    loop = served.batcher
    cases = [(f"User: say {w}", 20 + 3 * i, 0.0 if i % 2 else 1.0, i) for i, w in
             enumerate(["alpha", "beta", "gamma", "delta", "omega", "alpha beta", "gamma delta", "x"])]

    def ask(case):
        prompt, max_tokens, temperature, seed = case
        r = client.post("/v1/completions", headers=auth(keys["text"]), json={
            "model": MODEL, "prompt": prompt, "max_tokens": max_tokens, "temperature": temperature, "seed": seed})
        assert r.status_code == 200, r.text
        return r.json()["choices"][0]["text"]

    # the model is held while the requests queue, so they all decode together once it is free
    with ThreadPoolExecutor(len(cases)) as pool:
        with served.forward_lock:
            admitted = loop.admitted
            futures = [pool.submit(ask, c) for c in cases]
            deadline = time.time() + 30  # until each is queued or taken (and held by the lock)
            while loop.admitted - admitted + loop.depth < len(cases) and time.time() < deadline:
                time.sleep(0.01)
        got = [f.result(timeout=60) for f in futures]
    assert loop.max_rows_seen >= len(cases) - 1
    assert got == [expected(lm_run, p, m, t, s) for p, m, t, s in cases]


@pytest.mark.parametrize("body, status, param", [
    ({"prompt": "a", "max_tokens": 64}, 400, "max_tokens"),  # the context is 64: at most 63
    ({"prompt": "a", "n": 2}, 400, "n"),
    ({"prompt": "a", "temperature": -0.5}, 422, "temperature"),
    ({"prompt": "a", "stop": ["", "x"]}, 400, "stop"),
    ({"prompt": ["a", "b"]}, 400, "prompt"),
    ({"prompt": "a", "model": "no-such-model"}, 404, "model"),
])
def test_bad_completion_requests_get_openai_errors(client, keys, body, status, param):
    r = client.post("/v1/completions", headers=auth(keys["text"]), json={"model": MODEL, **body})
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["param"] == param and err["message"] and err["type"]


def test_bad_chat_requests_scopes_and_a_cut_prompt(client, keys):
    h = auth(keys["text"])
    r = client.post("/v1/chat/completions", headers=h, json={"model": MODEL, "messages": []})
    assert r.status_code == 422 and r.json()["error"]["param"] == "messages"
    r = client.post("/v1/chat/completions", headers=h,
                    json={"model": MODEL, "messages": [{"role": "robot", "content": "hi"}]})
    assert r.status_code == 422
    with pytest.raises(openai.BadRequestError) as e:
        make(client, keys["text"]).chat.completions.create(model=MODEL, n=3, messages=[{"role": "user", "content": "x"}])
    assert e.value.param == "n"
    with pytest.raises(openai.PermissionDeniedError) as e:
        make(client, keys["gen"]).completions.create(model=MODEL, prompt="x")
    assert "text" in e.value.message
    # a prompt longer than the context is cut from the left, and the answer says so
    r = client.post("/v1/completions", headers=h, json={"model": MODEL, "prompt": "alpha " * 40, "max_tokens": 10})
    assert r.status_code == 200 and r.json()["usage"]["prompt_tokens"] == 54
    assert "only its last 54" in r.json()["warnings"][0] and "54" in r.headers["x-genforge-warning"]


def test_models_list_the_lm_and_metrics_count_tokens(client, keys):
    card = make(client, keys["text"]).models.list().data[0]
    assert (card.id, card.kind, card.context, card.max_tokens) == (MODEL, "text-generation", 64, 63)
    client.post("/v1/completions", headers=auth(keys["text"]), json={"model": MODEL, "prompt": "a", "max_tokens": 7})
    reg = client.app.state.metrics.registry
    assert reg.get_sample_value("genforge_generated_tokens_total", {"model": MODEL}) == 7
    assert reg.get_sample_value("genforge_first_token_seconds_count", {"model": MODEL}) == 1


def test_a_client_leaving_mid_stream_frees_its_row(tmp_path, lm_run, keys):
    import uvicorn

    app = create_app(_settings(tmp_path, lm_run, keys))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.time() + 30
        while not server.started and time.time() < deadline:
            time.sleep(0.02)
        served = app.state.serve["models"].by_id[MODEL]
        step = served.step

        def slow_step(*a):  # 20 ms a token: the whole answer would take over a second
            time.sleep(0.02)
            return step(*a)

        served.step = slow_step
        url, h = f"http://127.0.0.1:{port}/v1/completions", auth(keys["text"])
        body = {"model": MODEL, "prompt": "User:", "max_tokens": 59, "temperature": 0, "stream": True}
        with httpx.Client(timeout=30) as http:
            with http.stream("POST", url, headers=h, json=body) as r:
                assert r.status_code == 200
                next(r.iter_lines())  # the first event came: then hang up
        deadline = time.time() + 10
        while served.batcher.active and time.time() < deadline:
            time.sleep(0.01)
        assert served.batcher.active == 0
        made = app.state.metrics.registry.get_sample_value("genforge_generated_tokens_total", {"model": MODEL})
        assert made < 59
        served.step = step
        r = httpx.post(url, headers=h, json={**body, "stream": False, "max_tokens": 5}, timeout=30)
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 5
    finally:
        server.should_exit = True
        thread.join(30)


def test_translations_equal_the_pipeline_alone_or_merged(tmp_path, lm_run, translate_run, keys):
    cfg = settings(tmp_path, {"lm": lm_run, "mt": translate_run}, keys, models=("lm", "mt"), rate_limit=0)
    pipe = pipeline(translate_run)
    texts = ["the red house is big 3.", "a cat sees the dog 7.", "   ", "green tree 9."]
    with TestClient(create_app(cfg)) as c:
        h = auth(keys["text"])
        r = c.post("/v1/translations", headers=h, json={"model": "tiny-mt", "input": texts, "beam": 3})
        assert r.status_code == 200, r.text
        assert [d["translation"] for d in r.json()["data"]] == pipe.translate(texts, beam=3)
        assert r.json()["data"][2]["translation"] == ""
        # requests that queue while the model is busy share the next translate call
        served = c.app.state.serve["models"].by_id["tiny-mt"]
        real, entered, release, sizes = served.batcher.run_batch, threading.Event(), threading.Event(), []

        def gated(payloads):
            sizes.append(len(payloads))
            entered.set()
            release.wait(30)
            return real(payloads)

        def ask(t):
            r = c.post("/v1/translations", headers=h, json={"model": "tiny-mt", "input": t, "beam": 2})
            return r.json()["data"][0]["translation"]

        served.batcher.run_batch = gated
        with ThreadPoolExecutor(len(texts)) as pool:
            futures = [pool.submit(ask, texts[0])]
            assert entered.wait(30)
            futures += [pool.submit(ask, t) for t in texts[1:]]
            deadline = time.time() + 30
            while served.batcher.depth < len(texts) - 1 and time.time() < deadline:
                time.sleep(0.01)
            release.set()
            got = [f.result(timeout=60) for f in futures]
        assert got == pipe.translate(texts, beam=2) and sizes == [1, len(texts) - 1]
        for body, status, param in [({"input": "x", "beam": 0}, 422, "beam"),
                                    ({"input": [], "beam": 2}, 400, "input"),
                                    ({"input": "x", "model": MODEL}, 404, "model")]:
            r = c.post("/v1/translations", headers=h, json={"model": "tiny-mt", **body})
            assert r.status_code == status and r.json()["error"]["param"] == param, r.text
        assert c.post("/v1/translations", headers=auth(keys["gen"]), json={"input": "x"}).status_code == 403


@pytest.mark.parametrize("positions", ["learned", "rotary"])
def test_decode_step_with_rows_of_different_lengths_equals_forward(positions):
    import torch

    from genforge.models.gpt import GPT

    torch.manual_seed(0)
    model = GPT(vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=16, positions=positions).eval()
    seqs = [torch.randint(0, 50, (n,)) for n in (3, 9, 5)]
    cache = [(torch.zeros(3, 2, 16, 8), torch.zeros(3, 2, 16, 8)) for _ in range(2)]
    with torch.no_grad():
        for i, s in enumerate(seqs):  # each row's prompt but its last token, as the server's prefill
            for layer, (k, v) in enumerate(model(s[None, :-1], use_cache=True)[1]):
                cache[layer][0][i, :, :k.shape[2]], cache[layer][1][i, :, :k.shape[2]] = k[0], v[0]
        lengths = torch.tensor([len(s) - 1 for s in seqs])
        for step in range(2):
            got = model.decode_step(torch.stack([s[-1] for s in seqs]), cache, lengths + step)
            want = torch.stack([model(s[None])[0, -1] for s in seqs])
            # float32 sums of 16-wide dot products in another order: a few ulps of logits near 1
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
            seqs = [torch.cat([s, torch.tensor([7 + i])]) for i, s in enumerate(seqs)]
        with pytest.raises(ValueError, match="context"):
            model.decode_step(torch.zeros(3, dtype=torch.long), cache, torch.tensor([2, 16, 4]))


def test_chat_default_max_tokens_fit_the_context_and_a_full_queue_is_503(tmp_path, lm_run, keys):
    with TestClient(create_app(_settings(tmp_path, lm_run, keys, queue_size=1))) as c:
        h = auth(keys["text"])
        messages = [{"role": "user", "content": "say gamma"}]  # 26 tokens with the template
        r = c.post("/v1/chat/completions", headers=h, json={"model": MODEL, "messages": messages, "temperature": 0})
        assert r.status_code == 200 and r.json()["usage"]["prompt_tokens"] == 26 and "warnings" not in r.json()
        assert r.json()["usage"]["completion_tokens"] <= 38  # the 64-token context, less the prompt
        served = c.app.state.serve["models"].by_id[MODEL]
        body = {"model": MODEL, "prompt": "a", "max_tokens": 5}
        with ThreadPoolExecutor(2) as pool, served.forward_lock:
            admitted = served.batcher.admitted
            first = pool.submit(c.post, "/v1/completions", headers=h, json=body)  # taken, held by the lock
            deadline = time.time() + 30
            while served.batcher.admitted == admitted and time.time() < deadline:
                time.sleep(0.01)
            second = pool.submit(c.post, "/v1/completions", headers=h, json=body)  # waits: the queue is full
            while served.batcher.depth < 1 and time.time() < deadline:
                time.sleep(0.01)
            # (were the queue not full, this request would wait for the lock this test holds)
            assert served.batcher.depth == 1 and not second.done()
            r = c.post("/v1/completions", headers=h, json=body)
            assert r.status_code == 503 and r.headers["retry-after"] and r.json()["error"]["code"] == "queue_full"
        assert first.result(timeout=60).status_code == 200 and second.result(timeout=60).status_code == 200


def test_fuzzed_text_requests_never_get_a_server_error(tmp_path, lm_run, translate_run, keys):
    schemathesis = pytest.importorskip("schemathesis")
    from hypothesis import HealthCheck, given
    from hypothesis import settings as fuzz_settings

    app = create_app(settings(tmp_path, {"lm": lm_run, "mt": translate_run}, keys, models=("lm", "mt"),
                              rate_limit=0))
    seen: dict[str, set[int]] = {}
    with TestClient(app):
        schema = schemathesis.openapi.from_asgi("/openapi.json", app)
        for result in schema.get_all_operations():
            op = result.ok()
            if op.label not in ("POST /v1/completions", "POST /v1/chat/completions", "POST /v1/translations"):
                continue

            @given(case=op.as_strategy())
            @fuzz_settings(max_examples=10, deadline=None, database=None, suppress_health_check=list(HealthCheck))
            def check(case):
                r = case.call(headers=auth(keys["text"]))
                seen.setdefault(op.label, set()).add(r.status_code)
                assert r.status_code < 500, f"{op.label}: {r.status_code} {r.text[:300]}"

            check()
    assert len(seen) == 3 and all(200 in s for s in seen.values()), seen  # past validation too
