"""The web page's language-model sections in a real browser (Debian's /usr/bin/chromium driven by
playwright, as tests/test_web_text.py): text streamed into the page as the tokens come (the pipeline's
text, arriving over time), chat mode, the stop button, errors, and the translation box.

Skipped unless both are installed. Saves a screenshot to /tmp/genforge_ui_lm.png.
"""
from __future__ import annotations

import os
import time

import pytest
from web_helpers import CHROMIUM, browser_page, connect, serving

pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} not installed")
sync_api = pytest.importorskip("playwright.sync_api")
uvicorn = pytest.importorskip("uvicorn")

from text_runs import lm_run, pipeline, translate_run  # noqa: E402,F401

# when each piece of text lands in the output, in ms since the page loaded
_WATCH = """() => {
  window.pieceTimes = [];
  new MutationObserver(() => window.pieceTimes.push(performance.now()))
    .observe(document.getElementById("lm-output"), { childList: true, characterData: true, subtree: true });
}"""


@pytest.fixture
def server(tmp_path, lm_run, translate_run):
    from genforge.serve import Settings, create_app
    from genforge.serve.auth import KeyStore

    _, key = KeyStore(tmp_path / "keys.json").create("ui", "text")
    app = create_app(Settings(models=[str(lm_run), str(translate_run)], keys_path=tmp_path / "keys.json",
                              device="cpu", jobs_url=f"sqlite:///{tmp_path / 'jobs.db'}"))
    with serving(app) as url:
        served = app.state.serve["models"].by_id[lm_run.name]
        step = served.step

        def slow_step(*a):  # 25 ms a token, so streaming shows as text arriving over time
            time.sleep(0.025)
            return step(*a)

        served.step = slow_step
        yield url, key, served


def test_text_streams_into_the_page_and_translations_show(server, lm_run, translate_run):
    url, key, served = server
    lm = pipeline(lm_run)
    with browser_page() as (page, errors):
        connect(page, url, key, "1 language model(s), 1 translator(s)", ("#lm-section", "#mt-section"))
        expect = sync_api.expect
        # greedy completion: the pipeline's text, in pieces spread over the generation
        want = lm.generate("User: say alpha", max_tokens=40, temperature=0)
        page.fill("#lm-prompt", "User: say alpha")
        page.fill("#lm-max", "40")
        page.fill("#lm-temp", "0")
        page.evaluate(_WATCH)
        page.click("#lm-write")
        expect(page.locator("#lm-info")).to_contain_text("Done (reached max tokens)", timeout=30_000)
        assert page.text_content("#lm-output") == want
        times = page.evaluate("window.pieceTimes")
        assert len(times) >= 10 and times[-1] - times[0] > 300  # 40 tokens at >= 25 ms each
        # chat mode: the chat template's reply
        page.select_option("#lm-mode", "chat")
        page.fill("#lm-max", "20")
        page.fill("#lm-prompt", "say beta")
        page.click("#lm-write")
        expect(page.locator("#lm-info")).to_contain_text("Done", timeout=30_000)
        reply = lm.generate("User: say beta\nAssistant:", max_tokens=20, temperature=0,
                            stop=["\nUser:", "\nSystem:"]).lstrip()
        assert page.text_content("#lm-output") == reply
        # stop mid-way: the page says so and the server frees the row
        page.select_option("#lm-mode", "completion")
        page.fill("#lm-max", "60")
        page.fill("#lm-prompt", "a")
        page.click("#lm-write")
        expect(page.locator("#lm-stop")).to_be_enabled()
        deadline = time.time() + 10  # (the page's CSP forbids wait_for_function's eval)
        while len(page.text_content("#lm-output")) < 3 and time.time() < deadline:
            time.sleep(0.01)
        page.click("#lm-stop")
        expect(page.locator("#lm-info")).to_have_text("Stopped.")
        deadline = time.time() + 10
        while served.batcher.active and time.time() < deadline:
            time.sleep(0.02)
        assert served.batcher.active == 0
        # an error from the API is shown in words
        page.fill("#lm-max", "500")
        page.evaluate("document.getElementById('lm-max').removeAttribute('max')")
        page.click("#lm-write")
        expect(page.locator("#lm-error")).to_contain_text("max_tokens=500")
        # the translation box: one text per line, the pipeline's translations in order
        texts = ["the red house is big 3.", "a cat sees the dog 7."]
        page.fill("#mt-input", "\n".join(texts))
        page.fill("#mt-beam", "2")
        page.click("#mt-translate")
        expect(page.locator("#mt-output li")).to_have_count(2)
        got = page.eval_on_selector_all("#mt-output li", "els => els.map(e => e.textContent)")
        assert got == pipeline(translate_run).translate(texts, beam=2)
        expect(page.locator("#mt-error")).to_be_empty()
        page.screenshot(path="/tmp/genforge_ui_lm.png", full_page=True)
        assert not errors, errors
