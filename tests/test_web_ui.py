"""The web page in a real browser: Debian's /usr/bin/chromium driven by the playwright package.

Skipped unless both are installed (no browser is ever downloaded): `apt-get install chromium` and
`pip install playwright`. Saves a screenshot to /tmp/genforge_ui.png.
"""
from __future__ import annotations

import os

import pytest
from web_helpers import CHROMIUM, browser_page, serving

pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} not installed")
sync_api = pytest.importorskip("playwright.sync_api")
uvicorn = pytest.importorskip("uvicorn")

from serve_helpers import CLASSES, make_run  # noqa: E402



@pytest.fixture
def server(tmp_path):
    from genforge.serve import Settings, create_app
    from genforge.serve.auth import KeyStore

    gan = make_run(tmp_path, "tiny-gan", "gan", "dcgan",
                   {"z_dim": 16, "width": 8, "d_width": 8, "image_size": 16, "channels": 1})
    clf = make_run(tmp_path, "tiny-clf", "classify", "cnn",
                   {"in_channels": 1, "num_classes": 3, "image_size": 16, "width": 4, "feature_dim": 16},
                   CLASSES)
    cgan = make_run(tmp_path, "tiny-cgan", "gan", "cgan",
                    {"z_dim": 16, "width": 8, "d_width": 8, "image_size": 16, "channels": 1, "num_classes": 3},
                    CLASSES)
    _, key = KeyStore(tmp_path / "keys.json").create("ui", "generate,classify")
    app = create_app(Settings(models=[str(gan), str(clf), str(cgan)], keys_path=tmp_path / "keys.json", device="cpu",
                              jobs_url=f"sqlite:///{tmp_path / 'jobs.db'}"))
    with serving(app) as url:
        yield url, key, tmp_path


def test_generate_and_classify_in_browser(server):
    from PIL import Image

    from genforge.serve.auth import KeyStore

    url, key, tmp = server
    upload = tmp / "upload.png"
    Image.new("L", (16, 16), 200).save(upload)
    with browser_page(height=1000) as (page, errors):
        page.on("response", lambda r: errors.append(f"{r.status} {r.url}") if r.status == 404 else None)
        page.goto(url + "/")
        # a wrong key is explained in words, in the colour of every other error
        page.fill("#api-key", "gf_wrong_key")
        page.click("#connect")
        expect = sync_api.expect  # polls without eval(), which the page's CSP forbids
        expect(page.locator("#key-error")).to_contain_text("401")
        expect(page.locator("#key-error")).to_have_css("color", page.locator("#gen-error").evaluate(
            "e => getComputedStyle(e).color"))
        page.fill("#api-key", key)
        page.click("#connect")
        page.wait_for_selector("#generate:not([disabled])")
        # a class-conditional model: the class field appears, an unknown class is refused in words
        page.select_option("#gen-model", "tiny-cgan")
        expect(page.locator("#gen-labels")).to_be_visible()
        page.fill("#gen-n", "4")
        page.fill("#gen-labels", "hexagon")
        page.click("#generate")
        expect(page.locator("#gen-error")).to_contain_text("hexagon")
        page.fill("#gen-labels", "square, circle")
        page.click("#generate")
        expect(page.locator("#gallery img")).to_have_count(4)
        expect(page.locator("#gen-error")).to_be_empty()
        page.select_option("#gen-model", "tiny-gan")
        expect(page.locator("#gen-labels")).to_be_hidden()
        page.fill("#gen-n", "6")
        page.fill("#gen-seed", "3")
        page.click("#generate")
        expect(page.locator("#gallery img")).to_have_count(6)  # the 4 conditional images replaced
        srcs = page.eval_on_selector_all("#gallery img", "els => els.map(e => e.src)")
        assert len(srcs) == 6 and all(s.startswith("data:image/png;base64,") and len(s) > 40 for s in srcs)
        expect(page.locator("#gen-progress")).to_be_hidden()  # no job, no progress bar
        # a background job, polled to completion
        page.check("#gen-job")
        page.fill("#gen-seed", "4")
        page.click("#generate")
        expect(page.locator("#gen-progress-text")).to_contain_text("succeeded", timeout=30_000)
        assert page.eval_on_selector_all("#gallery img", "els => els.length") == 6
        page.set_input_files("#clf-file", str(upload))
        page.click("#classify")
        page.wait_for_selector("#clf-labels li")
        labels = page.eval_on_selector_all("#clf-labels li", "els => els.map(e => e.textContent)")
        assert len(labels) == 3 and all(any(c in x for c in CLASSES) for x in labels)
        page.screenshot(path="/tmp/genforge_ui.png", full_page=True)
        # an error from the server, shown in words: the key is revoked while the page is open
        KeyStore(tmp / "keys.json").revoke(key.split("_")[1])
        page.click("#generate")
        expect(page.locator("#gen-error")).to_contain_text("revoked")
        expect(page.locator("#gallery img")).to_have_count(0)  # old images do not pose as the answer
        icon = page.request.get(url + "/web/favicon.svg")
        assert icon.ok and icon.headers["content-type"].startswith("image/svg")
        assert not errors, errors


def test_api_docs_render_with_no_internet(server):
    """/docs and /redoc render every operation with each request off this server refused."""
    url, _, _ = server
    with browser_page(console_errors=True) as (page, errors):
        page.route("**/*", lambda r: r.continue_() if r.request.url.startswith(url) else r.abort())
        n_ops = sum(len(ops) for ops in page.request.get(url + "/openapi.json").json()["paths"].values())
        page.goto(url + "/docs")
        sync_api.expect(page.locator(".opblock")).to_have_count(n_ops)  # Swagger UI ran under its CSP
        path = page.locator(".opblock-summary-path", has_text="/v1/images/generations")
        sync_api.expect(path).to_be_visible()
        page.screenshot(path="/tmp/genforge_docs.png")
        assert not errors, errors
        page.goto(url + "/redoc")
        sync_api.expect(page.locator("[data-section-id^='operation/']")).to_have_count(n_ops)
