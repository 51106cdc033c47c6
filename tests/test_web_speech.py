"""The web page's speech section in a real browser (Debian's /usr/bin/chromium driven by playwright, as
tests/test_web_text.py): a text becomes an <audio> player that loads with a finite duration and a
download link to the same WAV the pipeline makes; an empty text and a text with nothing to say are
errors in words, and a multi-speaker model offers its voices. The voice is the tiny synthetic-tone
run of speech_runs.py. Skipped unless chromium, playwright and espeak-ng are installed. Saves a
screenshot to /tmp/genforge_ui_speech.png.
"""
from __future__ import annotations

import io
import json
import os
import wave

import numpy as np
import pytest
from web_helpers import CHROMIUM, browser_page, connect, serving

sync_api = pytest.importorskip("playwright.sync_api")
uvicorn = pytest.importorskip("uvicorn")

from speech_runs import SR, speech_runs  # noqa: E402,F401
from test_tts import needs_espeak  # noqa: E402

pytestmark = [pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} not installed"), needs_espeak]
TEXT = "A bad cab. Faded beads!"

# the <audio>'s duration once its metadata has loaded (an event, so no polling eval the CSP forbids)
_DURATION = """() => new Promise((resolve, reject) => {
  const a = document.getElementById("tts-player");
  const done = () => resolve(a.duration);
  if (a.readyState >= 1) return done();
  a.addEventListener("loadedmetadata", done, { once: true });
  a.addEventListener("error", () => reject(new Error(`audio error ${a.error && a.error.code}`)), { once: true });
  setTimeout(() => reject(new Error("no loadedmetadata in 20 s")), 20000);
})"""


@pytest.fixture
def server(tmp_path, speech_runs):
    from genforge.serve import Settings, create_app
    from genforge.serve.auth import KeyStore

    _, key = KeyStore(tmp_path / "keys.json").create("ui", "generate")
    app = create_app(Settings(models=[str(speech_runs["tts"])], keys_path=tmp_path / "keys.json", device="cpu",
                              jobs_url=f"sqlite:///{tmp_path / 'jobs.db'}"))
    with serving(app) as url:
        yield url, key


def _expected(run_dir, text, **kw) -> np.ndarray:
    import genforge

    wav, _ = genforge.load(run_dir, device="cpu")(text, **kw)
    return wav


def test_text_to_a_playable_clip(server, speech_runs):
    url, key = server
    expected = _expected(speech_runs["tts"], TEXT)
    with browser_page(console_errors=True) as (page, errors):
        speech_posts: list[dict] = []
        page.on("request", lambda r: speech_posts.append(json.loads(r.post_data))
                if r.url.endswith("/v1/audio/speech") else None)
        connect(page, url, key, "1 speech model(s)", ("#tts-section",))
        expect = sync_api.expect
        expect(page.locator("#tts-voice")).to_be_hidden()  # a single-speaker voice: nothing to choose
        # an empty (or blank) text is an error in words, and no request is made
        for text in ("", "   \n"):
            page.fill("#tts-input", text)
            page.click("#tts-speak")
            expect(page.locator("#tts-error")).to_have_text("Type a text to speak.")
        assert speech_posts == []
        expect(page.locator("#tts-player")).to_be_hidden()
        expect(page.locator("#tts-download")).to_be_hidden()
        # a text with nothing to say: the server's 422, in words
        page.fill("#tts-input", "?!")
        page.click("#tts-speak")
        expect(page.locator("#tts-error")).to_contain_text("422: The server could not accept those settings.")
        expect(page.locator("#tts-error")).to_contain_text("nothing to speak")
        expect(page.locator("#tts-speak")).to_be_enabled()
        # the text spoken: a player that loads with the clip's duration, and the clip to download
        page.fill("#tts-input", TEXT)
        page.click("#tts-speak")
        expect(page.locator("#tts-player")).to_be_visible(timeout=60_000)
        expect(page.locator("#tts-error")).to_be_empty()
        expect(page.locator("#tts-info")).to_contain_text(f"s of audio at {SR} Hz from tts, speed 1.")
        duration = page.evaluate(_DURATION)
        assert np.isfinite(duration) and duration > 0
        assert abs(duration - len(expected) / SR) < 0.01, (duration, len(expected) / SR)
        page.locator("#tts-section").screenshot(path="/tmp/genforge_ui_speech.png")
        assert speech_posts[-1] == {"model": "tts", "input": TEXT, "speed": 1, "response_format": "wav"}
        link = page.locator("#tts-download")
        expect(link).to_be_visible()
        assert link.get_attribute("download") == "tts_speech.wav" and link.get_attribute("href").startswith("blob:")
        with page.expect_download() as dl:
            link.click()
        data = open(dl.value.path(), "rb").read()
        with wave.open(io.BytesIO(data)) as w:  # the header's sizes are the file's own, not "unknown"
            assert (w.getframerate(), w.getsampwidth(), w.getnchannels()) == (SR, 2, 1)
            assert w.getnframes() == len(expected)
            got = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2") / 32767
        assert np.abs(got - expected).max() <= 1.5 / 32767  # the pipeline's audio, 16-bit rounding only
        # twice the speed: a shorter clip
        page.fill("#tts-speed", "2")
        page.click("#tts-speak")
        expect(page.locator("#tts-info")).to_contain_text("speed 2.", timeout=60_000)
        assert 0 < page.evaluate(_DURATION) < duration
        # a multi-speaker model's voices are offered, and the chosen one is sent (this single-speaker
        # run ignores it, as it does OpenAI's voice names)
        def with_voices(route):
            body = route.fetch().json()
            for m in body["data"]:
                m["voices"] = ["ann", "bob"]
            route.fulfill(json=body)

        page.route("**/v1/models", with_voices)
        page.click("#connect")
        expect(page.locator("#tts-voice")).to_be_visible()
        page.select_option("#tts-voice", "bob")
        page.click("#tts-speak")
        expect(page.locator("#tts-info")).to_contain_text("voice bob", timeout=60_000)
        assert speech_posts[-1]["voice"] == "bob"
        # the browser logs the refused request itself; nothing else may go wrong
        assert [e for e in errors if "status of 422" not in e] == [], errors
