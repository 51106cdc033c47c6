"""The API docs: Swagger UI at /docs and ReDoc at /redoc, their JavaScript and CSS served from the
fastapi-offline package instead of FastAPI's default CDN, so the docs work with no internet (FastAPI's
"self-hosting JavaScript and CSS for docs" recipe). Each page gets a strict CSP of its own."""
from __future__ import annotations

import base64
import hashlib
import re
from pathlib import Path

import fastapi_offline
from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

ASSETS = Path(fastapi_offline.__file__).resolve().parent / "static"
ASSETS_URL = "/docs/assets"


def _with_csp(page: HTMLResponse, extra: str = "") -> HTMLResponse:
    """Files from this server only; of inline scripts, only the one this page was made with (it holds
    the URLs, so it is hashed per response rather than once)."""
    hashes = "".join(f" 'sha256-{base64.b64encode(hashlib.sha256(s).digest()).decode()}'"
                     for s in re.findall(rb"<script>(.*?)</script>", page.body, re.S))
    page.headers["content-security-policy"] = (
        f"default-src 'self'; img-src 'self' data:; script-src 'self'{hashes}; {extra}"
        "frame-ancestors 'none'; base-uri 'none'; form-action 'none'")
    return page


def add_docs(app: FastAPI) -> None:
    """Routes for an app made with ``docs_url=None, redoc_url=None``. No OAuth2 redirect page: the
    API's only scheme is a bearer key."""
    app.mount(ASSETS_URL, StaticFiles(directory=ASSETS), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "").rstrip("/")
        return _with_csp(get_swagger_ui_html(
            openapi_url=root + app.openapi_url, title=f"{app.title} API",
            swagger_js_url=f"{root}{ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{root}{ASSETS_URL}/favicon.png"))

    @app.get("/redoc", include_in_schema=False)
    def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "").rstrip("/")
        # ReDoc styles itself with <style> elements made at run time and searches in a blob: worker
        return _with_csp(get_redoc_html(
            openapi_url=root + app.openapi_url, title=f"{app.title} API",
            redoc_js_url=f"{root}{ASSETS_URL}/redoc.standalone.js",
            redoc_favicon_url=f"{root}{ASSETS_URL}/favicon.png", with_google_fonts=False),
            "style-src 'self' 'unsafe-inline'; worker-src blob:; ")
