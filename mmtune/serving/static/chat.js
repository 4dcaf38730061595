// The chat page of `mmtune serve`: plain JS, no build step. It speaks the same OpenAI API as any client:
// the whole history (with its media parts) goes in each request, and the reply streams in over SSE.
"use strict";

const $ = (id) => document.getElementById(id);
const history = [];      // OpenAI messages (user turns keep their media parts)
let pending = [];        // media attached to the next user turn: {modality, name, dataUrl}
let modelName = null;

function apiHeaders() {
  const headers = { "Content-Type": "application/json" };
  const key = $("api-key").value.trim();
  if (key) headers["Authorization"] = `Bearer ${key}`;
  return headers;
}

async function loadModel() {
  const res = await fetch("/v1/models", { headers: apiHeaders() });
  const body = await res.json();
  if (!res.ok) { $("model-name").textContent = body.error ? body.error.message : res.statusText; return; }
  modelName = body.data[0].id;
  $("model-name").textContent = modelName + (body.data[0].media.length ? ` (${body.data[0].media.join(", ")})` : "");
}

function modalityOf(file) {
  for (const kind of ["image", "video", "audio"]) if (file.type.startsWith(kind + "/")) return kind;
  return null;
}

function readAsDataUrl(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });
}

function mediaView(item) {
  if (item.modality === "image") {
    const img = document.createElement("img");
    img.src = item.dataUrl; img.alt = item.name;
    return img;
  }
  const span = document.createElement("span");
  span.className = "media-name";
  span.textContent = `${item.modality === "video" ? "🎞" : "🔊"} ${item.name}`;
  return span;
}

function showPending() {
  const box = $("attachments");
  box.replaceChildren(...pending.map((item, k) => {
    const chip = document.createElement("span");
    chip.className = "chip"; chip.title = "click to remove";
    chip.append(mediaView(item));
    chip.onclick = () => { pending.splice(k, 1); showPending(); };
    return chip;
  }));
}

function addMessage(role, text, media = []) {
  const div = document.createElement("div");
  div.className = `message ${role}`;
  for (const item of media) div.append(mediaView(item));
  const body = document.createElement("div");
  body.className = "text";
  body.textContent = text;
  div.append(body);
  $("conversation").append(div);
  div.scrollIntoView({ block: "end" });
  return div;
}

function mediaPart(item) {
  if (item.modality === "image") return { type: "image_url", image_url: { url: item.dataUrl } };
  if (item.modality === "video") return { type: "video_url", video_url: { url: item.dataUrl } };
  const [head, data] = item.dataUrl.split(",", 2);
  const format = /audio\/(mpeg|mp3)/.test(head) ? "mp3" : (head.match(/audio\/(?:x-)?([\w]+)/) || [, "wav"])[1];
  return { type: "input_audio", input_audio: { data, format } };
}

function settings() {
  const out = { max_tokens: Number($("max-tokens").value) || undefined,
                temperature: Number($("temperature").value), top_p: Number($("top-p").value) };
  if ($("seed").value !== "") out.seed = Number($("seed").value);
  return out;
}

async function send(event) {
  event.preventDefault();
  const text = $("prompt").value.trim();
  if (!text && !pending.length) return;
  const media = pending;
  pending = []; showPending();
  $("prompt").value = "";
  addMessage("user", text, media);
  const content = [...media.map(mediaPart), ...(text ? [{ type: "text", text }] : [])];
  history.push({ role: "user", content });
  const system = $("system").value.trim();
  const messages = system ? [{ role: "system", content: system }, ...history] : history;
  const reply = addMessage("assistant", "");
  reply.dataset.state = "streaming";
  $("send").disabled = true;
  try {
    const answer = await streamReply(messages, reply.querySelector(".text"));
    history.push({ role: "assistant", content: answer });
    reply.dataset.state = "done";
  } catch (err) {
    history.pop();
    reply.className = "message error";
    reply.dataset.state = "error";
    reply.querySelector(".text").textContent = err.message;
  } finally {
    $("send").disabled = false;
  }
}

async function streamReply(messages, target) {
  const res = await fetch("/v1/chat/completions", {
    method: "POST", headers: apiHeaders(),
    body: JSON.stringify({ model: modelName, messages, stream: true, ...settings() }),
  });
  if (!res.ok) {
    const body = await res.json().catch(() => ({}));
    throw new Error(body.error ? body.error.message : `${res.status} ${res.statusText}`);
  }
  const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "", answer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {       // one server-sent event
      const line = buffer.slice(0, end).trim();
      buffer = buffer.slice(end + 2);
      if (!line.startsWith("data:")) continue;
      const data = line.slice(5).trim();
      if (data === "[DONE]") return answer;
      const chunk = JSON.parse(data);
      if (chunk.error) throw new Error(chunk.error.message);
      const delta = chunk.choices.length ? chunk.choices[0].delta.content : null;
      if (delta) { answer += delta; target.textContent = answer; target.scrollIntoView({ block: "end" }); }
    }
  }
  return answer;
}

async function attach(event) {
  for (const file of event.target.files) {
    const modality = modalityOf(file);
    if (!modality) { addMessage("error", `${file.name}: not an image, video or audio file`); continue; }
    pending.push({ modality, name: file.name, dataUrl: await readAsDataUrl(file) });
  }
  event.target.value = "";
  showPending();
}

for (const [id, key] of [["api-key", "mmtune.apiKey"], ["system", "mmtune.system"]]) {
  $(id).value = localStorage.getItem(key) || "";
  $(id).addEventListener("change", () => { localStorage.setItem(key, $(id).value); if (id === "api-key") loadModel(); });
}
$("composer").addEventListener("submit", send);
$("attach").addEventListener("change", attach);
$("prompt").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); $("composer").requestSubmit(); }
});
$("new-chat").addEventListener("click", () => { history.length = 0; $("conversation").replaceChildren(); });
loadModel();
