"""What the browser tests share: Debian's chromium with its flags, and a genforge app served by uvicorn in
a thread on a free loopback port (one torch thread, so the browser keeps a core)."""
from __future__ import annotations

import socket
import threading
import time
from contextlib import contextmanager

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]


@contextmanager
def serving(app):
    """The app's base URL while it is served; the server stops and the thread count is restored after."""
    import torch
    import uvicorn

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.time() + 30
        while not srv.started and time.time() < deadline:
            time.sleep(0.05)
        assert srv.started, "server did not start"
        yield f"http://127.0.0.1:{port}"
    finally:
        srv.should_exit = True
        thread.join(10)
        sock.close()
        torch.set_num_threads(threads)


@contextmanager
def browser_page(height: int = 1400, console_errors: bool = False, extra_args: list[str] = ()):
    """A chromium page 1100 px wide (flags ARGS + ``extra_args``) and the list its script errors (and,
    with ``console_errors``, its console errors) are collected in; the browser is closed after."""
    from playwright import sync_api

    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[*ARGS, *extra_args])
        try:
            page = browser.new_page(viewport={"width": 1100, "height": height})
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            if console_errors:
                page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            yield page, errors
        finally:
            browser.close()


def connect(page, url: str, key: str, status: str, sections: tuple[str, ...] = ()) -> None:
    """Open the page, check ``sections`` are hidden before a key is given, connect with ``key`` and
    wait for the key status to name ``status``; the sections are then visible."""
    from playwright import sync_api

    expect = sync_api.expect
    page.goto(url + "/")
    for s in sections:
        expect(page.locator(s)).to_be_hidden()
    page.fill("#api-key", key)
    page.click("#connect")
    expect(page.locator("#key-status")).to_contain_text(status)
    for s in sections:
        expect(page.locator(s)).to_be_visible()
