"""POST /v1/audio/speech through OpenAI's own Python client: whole and streamed audio, formats, voice
and speed, and the typed errors. The voice is the tiny synthetic-tone run of speech_runs.py."""
from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from serve_helpers import auth, keys, one_thread, settings  # noqa: E402,F401
from speech_runs import SR, speech_runs  # noqa: E402,F401
from test_tts import needs_espeak  # noqa: E402

openai = pytest.importorskip("openai")
from fastapi.testclient import TestClient  # noqa: E402

from genforge.serve import create_app  # noqa: E402

pytestmark = needs_espeak
TEXT = "A bad cab. Faded beads!"


@pytest.fixture
def app_client(tmp_path, speech_runs, keys):
    with TestClient(create_app(settings(tmp_path, speech_runs, keys, models=("tts",)))) as c:
        yield c


def make(c, key: str) -> "openai.OpenAI":
    return openai.OpenAI(api_key=key, base_url="http://testserver/v1", http_client=c, max_retries=0)


def _expected(run_dir, text, **kw) -> np.ndarray:
    import genforge

    wav, _ = genforge.load(run_dir, device="cpu")(text, **kw)
    return wav


def test_speech_wav_equals_the_pipeline(app_client, keys, speech_runs):
    import soundfile as sf

    client = make(app_client, keys["gen"])
    r = client.audio.speech.create(model="tts", input=TEXT, voice="alloy", response_format="wav")
    wav, sr = sf.read(io.BytesIO(r.content), dtype="float32")
    assert sr == SR
    expected = _expected(speech_runs["tts"], TEXT)
    assert len(wav) == len(expected)
    assert np.abs(wav - expected).max() <= 1.5 / 32767  # 16-bit rounding only
    fast = client.audio.speech.create(model="tts", input=TEXT, voice="alloy", response_format="pcm", speed=2.0)
    assert len(fast.content) // 2 < len(wav)
    assert fast.response.headers["x-sample-rate"] == str(SR)
    flac = client.audio.speech.create(model="tts", input=TEXT, voice="alloy", response_format="flac")
    data, sr = sf.read(io.BytesIO(flac.content), dtype="float32")
    assert sr == SR and len(data) == len(wav)


def test_speech_streams_sentence_by_sentence(app_client, keys, speech_runs):
    client = make(app_client, keys["gen"])
    with client.audio.speech.with_streaming_response.create(model="tts", input=TEXT, voice="alloy",
                                                            response_format="pcm") as r:
        assert r.headers["content-type"].startswith("audio/pcm")
        chunks = [c for c in r.iter_bytes() if c]
    pcm = np.frombuffer(b"".join(chunks), dtype="<i2")
    expected = _expected(speech_runs["tts"], TEXT)
    assert len(pcm) == len(expected) and len(chunks) >= 2  # one piece per sentence at least

    resp = app_client.post("/v1/audio/speech", headers=auth(keys["gen"]),
                           json={"input": TEXT, "stream_format": "sse"})
    events = [json.loads(line[6:]) for line in resp.text.splitlines() if line.startswith("data: ")]
    assert [e["type"] for e in events] == ["speech.audio.delta", "speech.audio.delta", "speech.audio.done"]
    assert events[-1]["usage"]["output_tokens"] == len(expected)


def test_speech_errors(app_client, keys):
    client = make(app_client, keys["gen"])
    with pytest.raises(openai.BadRequestError) as e:
        client.audio.speech.create(model="tts", input=TEXT, voice="alloy", response_format="mp3")
    assert e.value.param == "response_format" and "wav, pcm, flac" in e.value.message
    with pytest.raises(openai.NotFoundError):
        client.audio.speech.create(model="nope", input=TEXT, voice="alloy")
    with pytest.raises(openai.PermissionDeniedError):
        make(app_client, keys["clf"]).audio.speech.create(model="tts", input=TEXT, voice="alloy")
    with pytest.raises(openai.UnprocessableEntityError) as e:
        client.audio.speech.create(model="tts", input="?!", voice="alloy")
    assert e.value.param == "input" and "nothing to speak" in e.value.message
    for body in ({"input": TEXT, "speed": 9}, {"input": ""}, {"input": "x" * 5000}, {"input": TEXT, "pitch": 30}):
        r = app_client.post("/v1/audio/speech", headers=auth(keys["gen"]), json=body)
        assert r.status_code in (400, 422) and "error" in r.json(), body
    models = client.models.list()
    info = next(m for m in models if m.id == "tts")
    assert info.kind == "text-to-speech" and info.sample_rate == SR
