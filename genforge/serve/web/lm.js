// genforge web page, language models: text written token by token from the streaming completions
// route (fetch + ReadableStream over server-sent events), and a translation box. Uses app.js's $,
// state, setText, fillSelect and failure; app.js calls showLanguageModels() once the key connects.
"use strict";

const LM_KIND = "text-generation", MT_KIND = "translation";
const lm = { ctrl: null };

function showLanguageModels() {
  const lms = state.models.filter((m) => m.kind === LM_KIND);
  const mts = state.models.filter((m) => m.kind === MT_KIND);
  fillSelect($("lm-model"), lms);
  fillSelect($("mt-model"), mts);
  $("lm-section").hidden = !lms.length;
  $("mt-section").hidden = !mts.length;
  $("lm-write").disabled = !lms.length;
  $("mt-translate").disabled = !mts.length;
  updateLmFields();
  return lms.length || mts.length ? `, ${lms.length} language model(s), ${mts.length} translator(s)` : "";
}

function updateLmFields() {
  const m = state.models.find((x) => x.id === $("lm-model").value);
  if (m && m.max_tokens) $("lm-max").max = m.max_tokens;
}

// the events of an SSE body, as they arrive: each is the text after "data: "
async function* sseEvents(body) {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buf += decoder.decode(value, { stream: true });
    let end;
    while ((end = buf.indexOf("\n\n")) >= 0) {
      const event = buf.slice(0, end);
      buf = buf.slice(end + 2);
      for (const line of event.split("\n")) if (line.startsWith("data: ")) yield line.slice(6);
    }
  }
}

async function writeText(ev) {
  ev.preventDefault();
  const chat = $("lm-mode").value === "chat";
  const prompt = $("lm-prompt").value;
  const body = { model: $("lm-model").value, max_tokens: Number($("lm-max").value),
                 temperature: Number($("lm-temp").value), seed: Number($("lm-seed").value), stream: true };
  if (chat) body.messages = [{ role: "user", content: prompt }]; else body.prompt = prompt;
  const out = $("lm-output");
  out.textContent = "";
  setText("lm-error", "");
  setText("lm-info", "Writing...");
  $("lm-write").disabled = true;
  $("lm-stop").disabled = false;
  lm.ctrl = new AbortController();
  let finish = null, count = 0;
  try {
    const res = await fetch(chat ? "/v1/chat/completions" : "/v1/completions", {
      method: "POST", signal: lm.ctrl.signal, body: JSON.stringify(body),
      headers: { Authorization: `Bearer ${state.key}`, "Content-Type": "application/json" },
    });
    if (!res.ok) throw await failure(res);
    const warning = res.headers.get("X-Genforge-Warning");
    for await (const data of sseEvents(res.body)) {
      if (data === "[DONE]") break;
      const msg = JSON.parse(data);
      if (msg.error) throw new Error(msg.error.message);
      const choice = msg.choices[0];
      if (!choice) continue;
      const piece = chat ? (choice.delta.content || "") : choice.text;
      if (piece) {
        out.append(piece);  // a text node per piece: the text grows as the tokens come
        count += 1;
      }
      finish = choice.finish_reason || finish;
    }
    const why = finish === "stop" ? "reached a stop" : "reached max tokens";
    setText("lm-info", `Done (${why}) in ${count} piece(s).${warning ? " Note: " + warning : ""}`);
  } catch (e) {
    if (e.name === "AbortError") {
      setText("lm-info", "Stopped.");
    } else {
      setText("lm-info", "");
      setText("lm-error", e.message.startsWith("Failed to fetch") ? `Cannot reach the server (${e.message}).` : e.message);
    }
  } finally {
    lm.ctrl = null;
    $("lm-write").disabled = false;
    $("lm-stop").disabled = true;
  }
}

async function translateTexts(ev) {
  ev.preventDefault();
  const lines = $("mt-input").value.split("\n").filter((s) => s.trim());
  setText("mt-error", "");
  $("mt-output").replaceChildren();
  if (!lines.length) { setText("mt-error", "Type a text to translate (one per line)."); return; }
  $("mt-translate").disabled = true;
  try {
    const res = await api("/v1/translations", {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ model: $("mt-model").value, input: lines, beam: Number($("mt-beam").value) }),
    });
    for (const d of res.data) {
      const li = document.createElement("li");
      li.textContent = d.translation;
      $("mt-output").append(li);
    }
  } catch (e) {
    setText("mt-error", e.message);
  } finally {
    $("mt-translate").disabled = false;
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("lm-form").addEventListener("submit", writeText);
  $("lm-stop").addEventListener("click", () => { if (lm.ctrl) lm.ctrl.abort(); });
  $("lm-model").addEventListener("change", updateLmFields);
  $("mt-form").addEventListener("submit", translateTexts);
});
