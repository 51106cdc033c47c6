"""The web page's text sections in a real browser (Debian's /usr/bin/chromium driven by playwright, as
tests/test_web_ui.py): a prompt box whose images are the API's, and a caption drop zone.

Skipped unless both are installed. Saves a screenshot to /tmp/genforge_ui_text.png.
"""
from __future__ import annotations

import base64
import io
import os

import pytest
from web_helpers import CHROMIUM, browser_page, connect, serving

pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} not installed")
sync_api = pytest.importorskip("playwright.sync_api")
uvicorn = pytest.importorskip("uvicorn")

from serve_helpers import make_run  # noqa: E402
from text_runs import expected_b64, pipeline, text_runs  # noqa: E402,F401

PROMPT = "a small red circle above a large blue square"
# a File built in the page from base64 bytes, inside a DataTransfer as a drop event carries it
_DROPPED = """([b64, name]) => {
  const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  const dt = new DataTransfer();
  dt.items.add(new File([bytes], name, { type: "image/png" }));
  return dt;
}"""


@pytest.fixture
def server(tmp_path, text_runs):
    from genforge.serve import Settings, create_app
    from genforge.serve.auth import KeyStore

    gan = make_run(tmp_path, "tiny-gan", "gan", "dcgan",
                   {"z_dim": 16, "width": 8, "d_width": 8, "image_size": 16, "channels": 1})
    _, key = KeyStore(tmp_path / "keys.json").create("ui", "generate,classify")
    models = [str(text_runs[k]) for k in ("t2i", "textgan", "cap")] + [str(gan)]
    app = create_app(Settings(models=models, keys_path=tmp_path / "keys.json", device="cpu",
                              jobs_url=f"sqlite:///{tmp_path / 'jobs.db'}"))
    with serving(app) as url:
        yield url, key


def _png_b64(im) -> str:
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def test_prompt_box_and_caption_drop_zone(server, text_runs):
    from PIL import Image

    from genforge.data.shapes import Obj, Scene, render

    url, key = server
    scenes = [render(Scene([Obj("circle", "red", "small", 0, 1), Obj("square", "blue", "large", 2, 1)]), 16),
              render(Scene([Obj("triangle", "green", "large", 1, 1)], background="grey"), 16)]
    cap = pipeline(text_runs["cap"])
    with browser_page(height=1600) as (page, errors):
        # nothing to show before connecting
        connect(page, url, key, "2 text-to-image, 1 captioner", ("#t2i-section", "#cap-section"))
        expect = sync_api.expect
        # the prompt box: the page shows the images the API makes for that prompt and seed
        page.select_option("#t2i-model", "t2i")
        expect(page.locator("#t2i-guidance")).to_be_visible()
        page.fill("#t2i-prompt", PROMPT)
        page.fill("#t2i-n", "3")
        page.fill("#t2i-seed", "7")
        page.fill("#t2i-guidance", "2")
        page.fill("#t2i-negative", "green")
        page.click("#t2i-generate")
        expect(page.locator("#t2i-gallery img")).to_have_count(3)
        srcs = page.eval_on_selector_all("#t2i-gallery img", "els => els.map(e => e.src)")
        want = expected_b64(text_runs["t2i"], 3, 7, prompt=PROMPT, guidance=2.0, negative_prompt="green",
                            steps=3)
        assert srcs == [f"data:image/png;base64,{b}" for b in want]
        expect(page.locator("#t2i-info")).to_contain_text("3 image(s) from t2i, seed 7")
        expect(page.locator("#t2i-error")).to_be_empty()
        # a GAN has no steps or guidance to set, and refuses an empty prompt in words
        page.select_option("#t2i-model", "textgan")
        expect(page.locator("#t2i-guidance")).to_be_hidden()
        page.fill("#t2i-negative", "")
        page.fill("#t2i-prompt", "")
        page.click("#t2i-generate")
        expect(page.locator("#t2i-error")).to_contain_text("empty prompt")
        expect(page.locator("#t2i-gallery img")).to_have_count(0)  # old images do not pose as the answer
        expect(page.locator("#t2i-error")).to_have_css("color", page.locator("#gen-error").evaluate(
            "e => getComputedStyle(e).color"))
        # the caption drop zone: a chosen file, then a dropped one
        page.set_input_files("#cap-file", files=[{"name": "a.png", "mimeType": "image/png",
                                                  "buffer": base64.b64decode(_png_b64(scenes[0]))}])
        expect(page.locator("#cap-text")).to_have_text(cap.caption([scenes[0]])[0])
        expect(page.locator("#cap-preview")).to_be_visible()
        first = page.get_attribute("#cap-preview", "src")
        page.fill("#cap-beam", "3")
        dropped = page.evaluate_handle(_DROPPED, [_png_b64(scenes[1]), "b.png"])
        page.dispatch_event("#cap-drop", "drop", {"dataTransfer": dropped})
        expect(page.locator("#cap-preview")).not_to_have_attribute("src", first)  # the dropped file's
        expect(page.locator("#cap-text")).to_have_text(cap.caption([scenes[1]], beam=3)[0])
        page.screenshot(path="/tmp/genforge_ui_text.png", full_page=True)
        tiny = page.evaluate_handle(_DROPPED, [_png_b64(Image.new("RGB", (1, 1))), "c.png"])
        page.dispatch_event("#cap-drop", "drop", {"dataTransfer": tiny})
        expect(page.locator("#cap-error")).to_contain_text("8x8")
        expect(page.locator("#cap-text")).to_be_empty()
        expect(page.locator("#cap-preview")).to_be_hidden()
        assert not errors, errors
