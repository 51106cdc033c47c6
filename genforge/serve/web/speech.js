// genforge web page, speech: a text becomes audio through OpenAI's speech route (POST /v1/audio/speech,
// response_format wav), fetched whole with the key and played from a blob URL in an <audio> player,
// with a download link. Uses app.js's $, state, setText, showKindSection, clearMedia and failure; app.js calls
// showSpeechModels() once the key connects.
"use strict";

const SPEECH_KIND = "text-to-speech";
const tts = { url: null };

function showSpeechModels() {
  return showKindSection(SPEECH_KIND, "tts", "tts-speak", "speech", updateSpeechFields);
}

// a multi-speaker model's speakers are OpenAI's `voice`; a single-speaker model has no choice to offer
function updateSpeechFields() {
  const m = state.models.find((x) => x.id === $("tts-model").value);
  const voices = (m && m.voices) || [];
  $("tts-voice").replaceChildren(...voices.map((v) => new Option(v, v)));
  for (const el of document.querySelectorAll(".tts-voices")) el.classList.toggle("hidden-field", !voices.length);
}

function clearSpeech() {
  clearMedia("tts", tts);
}

// The server streams its WAV with an "unknown length" header (it sends the header before the audio
// exists). Once the whole file is here, its real sizes go in, so the download is a plain WAV that
// every tool reads and players know the duration from the header.
function sizedWav(buf) {
  const v = new DataView(buf);
  const RIFF = 0x52494646, DATA = 0x64617461;  // "RIFF", "data" (big-endian reads)
  if (buf.byteLength >= 44 && v.getUint32(0) === RIFF && v.getUint32(36) === DATA) {
    v.setUint32(4, buf.byteLength - 8, true);
    v.setUint32(40, buf.byteLength - 44, true);
  }
  return buf;
}

async function speak(ev) {
  ev.preventDefault();
  setText("tts-error", "");
  setText("tts-info", "");
  clearSpeech();  // an old clip is not the answer to this text
  const input = $("tts-input").value;
  if (!input.trim()) { setText("tts-error", "Type a text to speak."); return; }
  const body = { model: $("tts-model").value, input, speed: Number($("tts-speed").value),
                 response_format: "wav" };
  if (!$("tts-voice").classList.contains("hidden-field") && $("tts-voice").value) body.voice = $("tts-voice").value;
  $("tts-speak").disabled = true;
  setText("tts-info", "Speaking...");
  try {
    let res;
    try {
      res = await fetch("/v1/audio/speech", {
        method: "POST", body: JSON.stringify(body),
        headers: { Authorization: `Bearer ${state.key}`, "Content-Type": "application/json" },
      });
    } catch (e) {
      throw new Error(`Cannot reach the server (${e.message}).`);
    }
    if (!res.ok) throw await failure(res);
    let wav;
    try {
      wav = sizedWav(await res.arrayBuffer());
    } catch (e) {  // the status was sent, then synthesis or the connection failed part-way
      throw new Error(`The audio broke off before its end (${e.message}).`);
    }
    const rate = Number(res.headers.get("X-Sample-Rate"));
    tts.url = URL.createObjectURL(new Blob([wav], { type: "audio/wav" }));
    const player = $("tts-player");
    player.src = tts.url;
    player.hidden = false;
    const link = $("tts-download");
    link.href = tts.url;
    link.download = `${body.model}_speech.wav`;
    link.hidden = false;
    const what = rate ? `${((wav.byteLength - 44) / 2 / rate).toFixed(2)} s of audio at ${rate} Hz` : "Audio";
    setText("tts-info", `${what} from ${body.model}, speed ${body.speed}${body.voice ? ", voice " + body.voice : ""}.`);
    player.play().catch(() => { /* autoplay refused: the controls still play it */ });
  } catch (e) {
    clearSpeech();
    setText("tts-info", "");
    setText("tts-error", e.message);
  } finally {
    $("tts-speak").disabled = false;
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("tts-form").addEventListener("submit", speak);
  $("tts-model").addEventListener("change", updateSpeechFields);
});
