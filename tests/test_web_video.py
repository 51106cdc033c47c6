"""The web page's video section in a real browser (Debian's /usr/bin/chromium driven by playwright, as
tests/test_web_text.py): a prompt becomes a progress bar, then a <video> that loads and plays, with a
download link. Skipped unless both are installed. Saves a screenshot to /tmp/genforge_ui_video.png.
"""
from __future__ import annotations

import os

import pytest
from web_helpers import CHROMIUM, browser_page, connect, serving

pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} not installed")
sync_api = pytest.importorskip("playwright.sync_api")
uvicorn = pytest.importorskip("uvicorn")

from video_runs import video_run  # noqa: E402

AUTOPLAY = ["--autoplay-policy=no-user-gesture-required"]


@pytest.fixture
def server(tmp_path, tmp_path_factory):
    from genforge.serve import Settings, create_app
    from genforge.serve.auth import KeyStore

    run = video_run(tmp_path_factory.mktemp("video-runs"))
    _, key = KeyStore(tmp_path / "keys.json").create("ui", "generate")
    app = create_app(Settings(models=[str(run)], keys_path=tmp_path / "keys.json", device="cpu",
                              jobs_url=f"sqlite:///{tmp_path / 'jobs.db'}"))
    with serving(app) as url:
        yield url, key


def test_prompt_to_a_playing_video(server):
    url, key = server
    with browser_page(console_errors=True, extra_args=AUTOPLAY) as (page, errors):
        connect(page, url, key, "1 video model(s)", ("#vid-section",))
        expect = sync_api.expect
        page.fill("#vid-prompt", "a red circle moves left")
        page.fill("#vid-seconds", "1")
        page.fill("#vid-steps", "2")
        page.click("#vid-generate")
        expect(page.locator("#vid-player")).to_be_visible(timeout=60_000)
        expect(page.locator("#vid-info")).to_contain_text("1 s clip (16x16)")
        expect(page.locator("#vid-error")).to_be_empty()
        page.wait_for_function("() => document.getElementById('vid-player').readyState >= 2", timeout=20_000)
        # it plays: not paused, and time moves on
        page.wait_for_function("() => { const v = document.getElementById('vid-player');"
                               " return !v.paused && v.currentTime > 0; }", timeout=20_000)
        size = page.evaluate("() => { const v = document.getElementById('vid-player');"
                             " return [v.videoWidth, v.videoHeight, v.duration]; }")
        assert size[0] == size[1] >= 128 and 0.5 < size[2] < 2  # upscaled for players; 8 frames at 8 fps
        link = page.locator("#vid-download")
        expect(link).to_be_visible()
        assert link.get_attribute("download").endswith(".mp4") and link.get_attribute("href").startswith("blob:")
        page.screenshot(path="/tmp/genforge_ui_video.png", full_page=True)
        assert not errors, errors
        # a refused request says why in words, and leaves no old clip posing as the answer
        page.evaluate("() => { document.getElementById('vid-seconds').max = 99; }")
        page.fill("#vid-seconds", "9")
        page.click("#vid-generate")
        expect(page.locator("#vid-error")).to_contain_text("seconds")
        expect(page.locator("#vid-player")).to_be_hidden()
        # the browser logs the refused request itself; nothing else may go wrong
        assert [e for e in errors if "status of 422" not in e] == [], errors
