"""Serving text-to-video on OpenAI's video API: create -> poll -> MP4 content, jobs that survive a
restart, bad requests as 4xx JSON, and OpenAI's own client. The run is the tiny one of video_runs.py."""
from __future__ import annotations

import io
import time
import warnings

import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402
from PIL import Image  # noqa: E402
from serve_helpers import auth, keys, one_thread, settings  # noqa: E402,F401
from video_runs import video_run  # noqa: E402

from genforge.serve import create_app  # noqa: E402

PROMPT = "a red circle moves left"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return {"video": video_run(tmp_path_factory.mktemp("video-runs"))}


def _config(tmp_path, runs, keys, **kw):
    return settings(tmp_path, runs, keys, models=("video",), **kw)


def _wait(c, video_id, key, timeout=60.0) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        v = c.get(f"/v1/videos/{video_id}", headers=auth(key)).json()
        if v["status"] in ("completed", "failed"):
            return v
        time.sleep(0.05)
    raise AssertionError(f"video {video_id} still {v['status']}")


def _expected(run, seed, frames, **kw):
    import genforge

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return genforge.load(run, device="cpu")(prompt=PROMPT, n=1, seed=seed, frames=frames, **kw)[0]


def test_create_poll_download_and_survive_a_restart(tmp_path, runs, keys):
    from genforge.video_io import read_video

    cfg = _config(tmp_path, runs, keys)
    with TestClient(create_app(cfg)) as c:
        r = c.post("/v1/videos", json={"prompt": PROMPT, "seconds": "1", "size": "16x16", "seed": 5, "steps": 2},
                   headers=auth(keys["gen"]))
        assert r.status_code == 200, r.text
        v = r.json()
        assert v["object"] == "video" and v["status"] in ("queued", "in_progress", "completed")
        assert v["model"] == "video" and v["seconds"] == "1" and v["size"] == "16x16"
        assert 0 <= v["progress"] <= 100 and isinstance(v["created_at"], int)
        done = _wait(c, v["id"], keys["gen"])
        assert done["status"] == "completed" and done["progress"] == 100 and done["completed_at"]
        content = c.get(f"/v1/videos/{v['id']}/content", headers=auth(keys["gen"]))
        assert content.status_code == 200 and content.headers["content-type"] == "video/mp4"
        assert content.content[4:8] == b"ftyp"
        assert [x["id"] for x in c.get("/v1/videos", headers=auth(keys["gen"])).json()["data"]] == [v["id"]]
        # another key neither sees nor downloads it
        assert c.get(f"/v1/videos/{v['id']}", headers=auth(keys["both"])).status_code == 404
        assert c.get(f"/v1/videos/{v['id']}/content", headers=auth(keys["both"])).status_code == 404
    (tmp_path / "clip.mp4").write_bytes(content.content)
    clip = read_video(tmp_path / "clip.mp4", size=16)
    want = _expected(runs["video"], seed=5, frames=8, steps=2)  # 1 s at the run's 8 fps
    assert clip.shape == want.shape  # H.264 is lossy: compare shapes and rough colours, not pixels
    assert (clip.float() - want.float()).abs().mean() < 24
    with TestClient(create_app(cfg)) as c:  # a new server on the same jobs store
        again = c.get(f"/v1/videos/{v['id']}/content", headers=auth(keys["gen"]))
        assert again.status_code == 200 and again.content == content.content


@pytest.mark.parametrize("body, param", [
    ({"prompt": PROMPT, "seconds": "0"}, "seconds"), ({"prompt": PROMPT, "seconds": 9}, "seconds"),
    ({"prompt": PROMPT, "seconds": "four"}, "seconds"), ({"prompt": PROMPT, "size": "720x1280"}, "size"),
    ({"prompt": PROMPT, "size": "big"}, None), ({"prompt": ""}, "prompt"), ({"seconds": "1"}, "prompt"),
    ({"prompt": PROMPT, "steps": 0}, "steps"), ({"prompt": PROMPT, "guidance": -1}, "guidance"),
    ({"prompt": PROMPT, "model": "nope"}, "model"), ({"prompt": PROMPT, "layout": "grid"}, "layout"),
])
def test_bad_requests_are_4xx_json(tmp_path, runs, keys, body, param):
    with TestClient(create_app(_config(tmp_path, runs, keys))) as c:
        r = c.post("/v1/videos", json=body, headers=auth(keys["gen"]))
        assert 400 <= r.status_code < 500, r.text
        err = r.json()["error"]
        assert err["message"] and (param is None or err["param"] == param)
        assert c.get("/v1/videos", headers=auth(keys["gen"])).json()["data"] == []  # nothing queued


def test_keys_scopes_and_unknown_ids(tmp_path, runs, keys):
    with TestClient(create_app(_config(tmp_path, runs, keys))) as c:
        assert c.post("/v1/videos", json={"prompt": PROMPT}).status_code == 401
        assert c.post("/v1/videos", json={"prompt": PROMPT}, headers=auth(keys["clf"])).status_code == 403
        assert c.get("/v1/videos/video_nope", headers=auth(keys["gen"])).status_code == 404
        assert c.get("/v1/videos/video_nope/content", headers=auth(keys["gen"])).status_code == 404
        models = c.get("/v1/models", headers=auth(keys["gen"])).json()["data"]
        assert models[0]["kind"] == "video-generation" and models[0]["size"] == "16x16"


def test_openai_client_creates_and_downloads_with_a_first_frame(tmp_path, runs, keys):
    openai = pytest.importorskip("openai")
    if not hasattr(openai.OpenAI, "videos"):
        pytest.skip("this openai client has no videos API")
    first = Image.new("RGB", (16, 16), (255, 0, 0))
    buf = io.BytesIO()
    first.save(buf, format="PNG")
    with TestClient(create_app(_config(tmp_path, runs, keys))) as c:
        oc = openai.OpenAI(api_key=keys["gen"], base_url="http://testserver/v1", http_client=c, max_retries=0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            v = oc.videos.create(model="video", prompt=PROMPT, seconds="1", size="16x16",
                                 input_reference=("first.png", buf.getvalue(), "image/png"),
                                 extra_body={"seed": 2, "steps": 1})
            assert _wait(c, v.id, keys["gen"])["status"] == "completed"
            data = oc.videos.download_content(v.id).read()
    assert data[4:8] == b"ftyp"
    from genforge.video_io import read_video

    (tmp_path / "c.mp4").write_bytes(data)
    frame0 = read_video(tmp_path / "c.mp4", size=16)[0].float()
    assert frame0[0].mean() > 200 and frame0[1:].mean() < 40  # the red first frame survived H.264


def test_layout_is_listed_and_chosen_per_request(tmp_path, runs, keys):
    import genforge
    from genforge.serve.video_models import VideoGenerator

    with TestClient(create_app(_config(tmp_path, runs, keys))) as c:
        listed = {m["id"]: m for m in c.get("/v1/models", headers=auth(keys["gen"])).json()["data"]}
        assert listed["video"]["default_layout"] == "paths"  # trained on shapes_video
        ids = [c.post("/v1/videos", json={"prompt": PROMPT, "seconds": "1", "seed": 2, "steps": 1, "layout": lay},
                      headers=auth(keys["gen"])).json()["id"] for lay in ("off", "paths")]
        assert all(_wait(c, i, keys["gen"])["status"] == "completed" for i in ids)
    gen = VideoGenerator.__new__(VideoGenerator)  # prepare() reads only the pipeline
    gen.pipe = genforge.load(runs["video"], device="cpu")
    assert gen.prepare(PROMPT, 1, 0, layout="off").layout == "off"
    assert gen.prepare(PROMPT, 1, 0).layout == "paths"
    assert gen.prepare(PROMPT, 1, 0, first=True).layout == "off"  # a given first frame fixes the start
