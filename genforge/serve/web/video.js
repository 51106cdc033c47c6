// genforge web page, video: a prompt becomes a clip through OpenAI's video API (POST /v1/videos, poll
// GET /v1/videos/{id} for progress, fetch /content with the key), shown in a looping <video> with a
// download link. Uses app.js's $, state, api, setText, showKindSection, clearMedia and sleep; app.js calls
// showVideoModels() once the key connects.
"use strict";

const VIDEO_KIND = "video-generation";
const vid = { url: null };

function showVideoModels() {
  return showKindSection(VIDEO_KIND, "vid", "vid-generate", "video", updateVideoFields);
}

function updateVideoFields() {
  const m = state.models.find((x) => x.id === $("vid-model").value);
  if (!m) return;
  const secs = $("vid-seconds");
  secs.max = Math.max(...m.seconds);
  if (!secs.value || Number(secs.value) > Number(secs.max)) secs.value = m.default_seconds;
  $("vid-steps").placeholder = `model default (${m.default_steps})`;
  $("vid-guidance").placeholder = `model default (${m.default_guidance})`;
}

function clearVideo() {
  clearMedia("vid", vid);
}

async function generateVideo(ev) {
  ev.preventDefault();
  $("vid-generate").disabled = true;
  setText("vid-error", "");
  setText("vid-info", "");
  clearVideo();
  const body = { model: $("vid-model").value, prompt: $("vid-prompt").value,
                 seconds: $("vid-seconds").value, seed: Number($("vid-seed").value) };
  if ($("vid-steps").value) body.steps = Number($("vid-steps").value);
  if ($("vid-guidance").value) body.guidance = Number($("vid-guidance").value);
  try {
    let v = await api("/v1/videos", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
    });
    $("vid-progress").hidden = false;
    while (v.status !== "completed") {
      if (v.status === "failed") throw new Error(`The video failed: ${v.error ? v.error.message : "unknown error"}`);
      $("vid-progress-bar").value = v.progress / 100;
      setText("vid-progress-text", `${v.status.replace("_", " ")} ${v.progress}%`);
      await sleep(400);
      v = await api(`/v1/videos/${encodeURIComponent(v.id)}`);
    }
    // the content route needs the key, which a <video src> cannot send: fetch it, play a blob URL
    const res = await fetch(`/v1/videos/${encodeURIComponent(v.id)}/content`,
                            { headers: { Authorization: `Bearer ${state.key}` } });
    if (!res.ok) throw new Error(`${res.status}: the video could not be downloaded`);
    vid.url = URL.createObjectURL(await res.blob());
    const player = $("vid-player");
    player.src = vid.url;
    player.hidden = false;
    const link = $("vid-download");
    link.href = vid.url;
    link.download = `${v.id}.mp4`;
    link.hidden = false;
    setText("vid-info", `${v.seconds} s clip (${v.size}) from ${v.model}, seed ${body.seed}`);
    await player.play().catch(() => { /* autoplay refused: the controls still play it */ });
  } catch (e) {
    setText("vid-error", e.message);
  } finally {
    $("vid-progress").hidden = true;
    $("vid-generate").disabled = false;
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("vid-form").addEventListener("submit", generateVideo);
  $("vid-model").addEventListener("change", updateVideoFields);
});
