"""Property-based fuzzing of the HTTP API from its own OpenAPI schema (schemathesis + hypothesis):
whatever a client sends, within the schema or not, the server answers without a 5xx.

Skipped unless schemathesis is installed (`pip install schemathesis`).
"""
from __future__ import annotations

import pytest

schemathesis = pytest.importorskip("schemathesis")
from fastapi.testclient import TestClient  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402

from genforge.serve import create_app  # noqa: E402
from serve_helpers import auth, keys, one_thread, runs, settings as serve_settings  # noqa: E402,F401


def test_no_server_errors(tmp_path, runs, keys):  # noqa: F811
    # one model of each kind, so requests without a "model" reach the models
    app = create_app(serve_settings(tmp_path, runs, keys, models=("cgan", "clf"), rate_limit=0))
    seen: dict[str, set[int]] = {}
    with TestClient(app):  # runs the lifespan: models loaded, workers started
        schema = schemathesis.openapi.from_asgi("/openapi.json", app)
        for result in schema.get_all_operations():
            op = result.ok()

            @given(case=op.as_strategy())
            @settings(max_examples=20, deadline=None, database=None, suppress_health_check=list(HealthCheck))
            def check(case):
                r = case.call(headers=auth(keys["admin"]))
                seen.setdefault(op.label, set()).add(r.status_code)
                assert r.status_code < 500, f"{op.label}: {r.status_code} {r.text[:300]}"

            check()
    assert 200 in seen["POST /v1/samples"], seen  # the fuzzer got past validation, not only 4xx
