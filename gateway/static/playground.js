// The nexa gateway playground: plain JavaScript against this gateway's own OpenAI-style API.
// No build step and no third-party code. Paths are relative, so the page also works behind a
// reverse proxy that mounts the gateway under a prefix.
"use strict";

const KEY_STORE = "nexa-playground-api-key"; // sessionStorage only: gone when the tab closes
const $ = (id) => document.getElementById(id);
const state = { models: [], chatHistory: [], chatImage: null, controllers: {}, pollTimer: null };

// -- API access -------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(message, status, code) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.code = code;
  }
}

function apiKey() {
  return sessionStorage.getItem(KEY_STORE) || "";
}

// The OpenAI envelope's error.message when there is one; otherwise what the server said.
async function errorOf(response) {
  const text = await response.text().catch(() => "");
  let message = "";
  let code = null;
  try {
    const body = JSON.parse(text);
    if (body && body.error) {
      message = typeof body.error === "string" ? body.error : body.error.message || "";
      code = body.error.code || null;
    } else if (body && body.detail) {
      message = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
    }
  } catch (_) {
    message = text.trim().slice(0, 500);
  }
  return new ApiError(message || `HTTP ${response.status} ${response.statusText}`, response.status, code);
}

async function api(path, options = {}) {
  const headers = Object.assign({}, options.headers || {});
  const key = apiKey();
  if (key) headers.Authorization = "Bearer " + key;
  const response = await fetch(path, Object.assign({}, options, { headers }));
  if (!response.ok) {
    const error = await errorOf(response);
    if (response.status === 401) askForKey(error.message);
    throw error;
  }
  return response;
}

function postJson(path, body, signal) {
  return api(path, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body), signal });
}

// Reads an SSE stream of chat or completion chunks; calls onText for each piece of text as it
// arrives. An error event inside the stream becomes an ApiError with the server's message.
async function streamChunks(path, body, signal, onText) {
  const response = await postJson(path, body, signal);
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  const result = { usage: null, finish: null };
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return result;
    buffer = (buffer + value).replace(/\r\n/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const data = block.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).replace(/^ /, "")).join("\n");
      if (!data) continue;
      if (data === "[DONE]") return result;
      const event = JSON.parse(data);
      if (event.error) throw new ApiError(event.error.message || "generation failed", response.status, event.error.code);
      if (event.usage) result.usage = event.usage;
      for (const choice of event.choices || []) {
        const text = choice.delta ? choice.delta.content : choice.text;
        if (text) onText(text);
        if (choice.finish_reason) result.finish = choice.finish_reason;
      }
    }
  }
}

// -- small UI helpers -------------------------------------------------------------------------

function showError(id, error) {
  const box = $(id);
  if (!error) {
    box.hidden = true;
    box.textContent = "";
    return;
  }
  box.textContent = error.message || String(error);
  box.hidden = false;
}

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function numberOf(id) {
  const raw = $(id).value.trim();
  return raw === "" ? undefined : Number(raw);
}

function modelById(id) {
  return state.models.find((m) => m.id === id);
}

function describe(model) {
  return `${model.id} — ${model.type} · ${model.format} · ${model.state}`;
}

function usageText(usage, seconds) {
  if (!usage) return `no usage reported · ${seconds.toFixed(1)} s`;
  const rate = usage.completion_tokens && seconds > 0 ? ` · ${(usage.completion_tokens / seconds).toFixed(1)} tokens/s` : "";
  return `usage: ${usage.prompt_tokens} prompt + ${usage.completion_tokens} completion = ${usage.total_tokens} tokens · ${seconds.toFixed(1)} s${rate}`;
}

function readAsDataURL(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(new Error(`Could not read ${file.name}.`));
    reader.readAsDataURL(file);
  });
}

async function busy(button, work) {
  const label = button.textContent;
  button.disabled = true;
  button.textContent = label + "…";
  try {
    await work();
  } finally {
    button.disabled = false;
    button.textContent = label;
    refreshModelsSoon();
  }
}

// -- API key ----------------------------------------------------------------------------------

function askForKey(message) {
  $("key-section").hidden = false;
  $("app").hidden = true;
  $("status").textContent = "needs an API key";
  const hadKey = Boolean(apiKey());
  showError("key-error", hadKey ? new Error(message) : null);
  if (hadKey) sessionStorage.removeItem(KEY_STORE);
  $("key-badge").hidden = true;
  $("api-key").focus();
}

$("key-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  sessionStorage.setItem(KEY_STORE, $("api-key").value.trim());
  $("api-key").value = "";
  await loadModels().catch(() => {});
});

$("key-forget").addEventListener("click", () => {
  sessionStorage.removeItem(KEY_STORE);
  location.reload();
});

// -- models -----------------------------------------------------------------------------------

async function loadModels() {
  let list;
  try {
    list = await (await api("v1/models")).json();
  } catch (error) {
    if (error.status !== 401) {
      $("status").textContent = "cannot list models";
      showError("global-error", error);
    }
    throw error;
  }
  showError("global-error", null);
  showError("key-error", null);
  $("key-section").hidden = true;
  $("app").hidden = false;
  $("key-badge").hidden = !apiKey();
  state.models = list.data || [];
  renderModels(list);
  return state.models;
}

function refreshModelsSoon() {
  clearTimeout(state.pollTimer);
  state.pollTimer = setTimeout(() => loadModels().catch(() => {}), 300);
}

function renderModels(list) {
  const models = state.models;
  const hash = list.manifest_hash ? ` · manifest ${String(list.manifest_hash).slice(0, 12)}` : "";
  $("status").textContent = `${models.length} model${models.length === 1 ? "" : "s"}${hash}`;
  $("models-summary").textContent = `(${models.filter((m) => m.state === "ready").length} ready)`;
  const body = $("models-table").tBodies[0];
  body.replaceChildren(...models.map((m) => {
    const row = element("tr");
    row.dataset.model = m.id;
    const name = element("td", "name", m.id);
    if (m.aliases && m.aliases.length) name.append(element("span", "muted", ` (${m.aliases.join(", ")})`));
    const stateCell = element("td", "state", "");
    stateCell.append(element("span", `badge ${m.state}`, m.state));
    if (m.error) stateCell.append(element("div", "error small", m.error));
    row.append(name, element("td", "type", m.type), element("td", "format", m.format), stateCell,
      element("td", "caps", (m.capabilities || []).join(", ")),
      element("td", "running", `${m.running || 0}${m.queue_depth ? ` (+${m.queue_depth} queued)` : ""}`));
    return row;
  }));
  fillPicker("chat-model", "chat");
  fillPicker("complete-model", "complete");
  fillPicker("embed-model", "embed");
  fillPicker("rerank-model", "rerank");
  fillPicker("speech-model", "speech");
  fillPicker("audio-model", "transcribe", "translate");
  fillPicker("image-model", "txt2img", "img2img");
  for (const section of document.querySelectorAll("section[data-capability]")) {
    const wanted = section.dataset.capability.split(" ");
    section.hidden = !models.some((m) => wanted.some((c) => (m.capabilities || []).includes(c)));
  }
  onChatModel();
  onAudioModel();
  onImageModel();
  if (models.some((m) => m.state === "loading")) {
    clearTimeout(state.pollTimer);
    state.pollTimer = setTimeout(() => loadModels().catch(() => {}), 1000);
  }
}

// One picker per section: the models that can serve it, each shown with type, format and state.
function fillPicker(id, ...capabilities) {
  const select = $(id);
  const previous = select.value;
  const options = state.models
    .filter((m) => capabilities.some((c) => (m.capabilities || []).includes(c)))
    .map((m) => {
      const option = element("option", "", describe(m));
      option.value = m.id;
      return option;
    });
  select.replaceChildren(...options);
  if (options.some((o) => o.value === previous)) select.value = previous;
}

$("models-refresh").addEventListener("click", () => loadModels().catch(() => {}));

// -- chat -------------------------------------------------------------------------------------

function onChatModel() {
  const model = modelById($("chat-model").value);
  const vision = Boolean(model && (model.capabilities || []).includes("vision"));
  $("chat-image-label").hidden = !vision;
  if (!vision) clearChatImage();
}

function clearChatImage() {
  state.chatImage = null;
  $("chat-image").value = "";
  $("chat-image-preview").hidden = true;
  $("chat-image-preview").removeAttribute("src");
}

$("chat-model").addEventListener("change", onChatModel);

$("chat-image").addEventListener("change", async () => {
  const file = $("chat-image").files[0];
  if (!file) return clearChatImage();
  state.chatImage = await readAsDataURL(file);
  $("chat-image-preview").src = state.chatImage;
  $("chat-image-preview").hidden = false;
});

function addMessage(role, text, image) {
  const log = $("chat-log");
  const placeholder = log.querySelector(".placeholder");
  if (placeholder) placeholder.remove();
  const item = element("div", `msg ${role}`);
  item.append(element("div", "role", role));
  if (image) {
    const img = element("img", "thumb");
    img.src = image;
    img.alt = "attached image";
    item.append(img);
  }
  const content = element("div", "content", text);
  item.append(content);
  log.append(item);
  log.scrollTop = log.scrollHeight;
  return content;
}

async function sendChat() {
  const text = $("chat-input").value.trim();
  if (!text && !state.chatImage) return;
  const model = $("chat-model").value;
  const image = state.chatImage;
  const content = image ? [{ type: "text", text }, { type: "image_url", image_url: { url: image } }] : text;
  const userMessage = { role: "user", content };
  const userNode = addMessage("user", text, image);
  const answer = addMessage("assistant", "");
  answer.dataset.state = "streaming";
  $("chat-input").value = "";
  clearChatImage();
  showError("chat-error", null);
  $("chat-send").disabled = true;
  $("chat-stop").disabled = false;
  const controller = (state.controllers.chat = new AbortController());
  const started = performance.now();
  let reply = "";
  try {
    const body = {
      model, messages: [...state.chatHistory, userMessage], stream: true, stream_options: { include_usage: true },
      temperature: numberOf("chat-temperature"), max_tokens: numberOf("chat-max-tokens"),
    };
    const result = await streamChunks("v1/chat/completions", body, controller.signal, (piece) => {
      reply += piece;
      answer.textContent = reply;
      $("chat-log").scrollTop = $("chat-log").scrollHeight;
    });
    answer.dataset.state = "done";
    $("chat-usage").textContent = usageText(result.usage, (performance.now() - started) / 1000);
    state.chatHistory.push(userMessage, { role: "assistant", content: reply });
  } catch (error) {
    if (error.name === "AbortError") {
      answer.dataset.state = "stopped";
      answer.parentElement.append(element("div", "muted small", "stopped"));
      $("chat-usage").textContent = `stopped after ${((performance.now() - started) / 1000).toFixed(1)} s`;
      state.chatHistory.push(userMessage, { role: "assistant", content: reply });
    } else {
      answer.dataset.state = "error";
      if (!reply) answer.parentElement.remove(); // nothing came: the message below says why
      userNode.parentElement.classList.add("failed");
      showError("chat-error", error);
    }
  } finally {
    $("chat-send").disabled = false;
    $("chat-stop").disabled = true;
    state.controllers.chat = null;
    refreshModelsSoon();
  }
}

$("chat-form").addEventListener("submit", (event) => {
  event.preventDefault();
  sendChat();
});
$("chat-input").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    if (!$("chat-send").disabled) sendChat();
  }
});
$("chat-stop").addEventListener("click", () => state.controllers.chat && state.controllers.chat.abort());
$("chat-clear").addEventListener("click", () => {
  if (state.controllers.chat) state.controllers.chat.abort();
  state.chatHistory = [];
  $("chat-log").replaceChildren(element("p", "muted placeholder", "No messages yet."));
  $("chat-usage").textContent = "";
  showError("chat-error", null);
});

// -- text completion --------------------------------------------------------------------------

$("complete-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const output = $("complete-output");
  output.textContent = "";
  output.dataset.state = "streaming";
  showError("complete-error", null);
  $("complete-send").disabled = true;
  $("complete-stop").disabled = false;
  const controller = (state.controllers.complete = new AbortController());
  const started = performance.now();
  try {
    const body = { model: $("complete-model").value, prompt: $("complete-input").value, stream: true,
      stream_options: { include_usage: true }, max_tokens: numberOf("complete-max-tokens") };
    const result = await streamChunks("v1/completions", body, controller.signal, (piece) => { output.textContent += piece; });
    output.dataset.state = "done";
    $("complete-usage").textContent = usageText(result.usage, (performance.now() - started) / 1000);
  } catch (error) {
    output.dataset.state = error.name === "AbortError" ? "stopped" : "error";
    if (error.name !== "AbortError") showError("complete-error", error);
  } finally {
    $("complete-send").disabled = false;
    $("complete-stop").disabled = true;
    refreshModelsSoon();
  }
});
$("complete-stop").addEventListener("click", () => state.controllers.complete && state.controllers.complete.abort());

// -- embeddings -------------------------------------------------------------------------------

function cosine(a, b) {
  let dot = 0, na = 0, nb = 0;
  for (let i = 0; i < a.length; i++) {
    dot += a[i] * b[i];
    na += a[i] * a[i];
    nb += b[i] * b[i];
  }
  return na && nb ? dot / Math.sqrt(na * nb) : 0;
}

$("embed-form").addEventListener("submit", (event) => {
  event.preventDefault();
  showError("embed-error", null);
  $("embed-result").textContent = "";
  busy($("embed-send"), async () => {
    try {
      const body = { model: $("embed-model").value, input: [$("embed-a").value, $("embed-b").value], encoding_format: "float" };
      const answer = await (await postJson("v1/embeddings", body)).json();
      const [a, b] = [...answer.data].sort((x, y) => x.index - y.index).map((d) => d.embedding);
      const similarity = cosine(a, b);
      $("embed-result").dataset.similarity = String(similarity);
      const tokens = answer.usage ? ` · ${answer.usage.prompt_tokens} tokens` : "";
      $("embed-result").textContent = `cosine similarity ${similarity.toFixed(4)} · ${a.length} dimensions${tokens}`;
    } catch (error) {
      showError("embed-error", error);
    }
  });
});

// -- rerank -----------------------------------------------------------------------------------

$("rerank-form").addEventListener("submit", (event) => {
  event.preventDefault();
  showError("rerank-error", null);
  $("rerank-results").replaceChildren();
  $("rerank-usage").textContent = "";
  busy($("rerank-send"), async () => {
    try {
      const documents = $("rerank-documents").value.split("\n").map((line) => line.trim()).filter(Boolean);
      const body = { model: $("rerank-model").value, query: $("rerank-query").value, documents, return_documents: true };
      const answer = await (await postJson("v1/rerank", body)).json();
      $("rerank-results").replaceChildren(...answer.results.map((result) => {
        const item = element("li", "", "");
        item.dataset.index = String(result.index);
        item.dataset.score = String(result.relevance_score);
        item.append(element("span", "score", result.relevance_score.toFixed(4)), " ",
          element("span", "", result.document ? result.document.text : documents[result.index]));
        return item;
      }));
      $("rerank-usage").textContent = answer.usage ? `${answer.usage.prompt_tokens} tokens` : "";
    } catch (error) {
      showError("rerank-error", error);
    }
  });
});

// -- text to speech ---------------------------------------------------------------------------

$("speech-form").addEventListener("submit", (event) => {
  event.preventDefault();
  showError("speech-error", null);
  $("speech-meta").textContent = "";
  busy($("speech-send"), async () => {
    const started = performance.now();
    try {
      const format = $("speech-format").value;
      const body = { model: $("speech-model").value, input: $("speech-input").value, voice: $("speech-voice").value,
        response_format: format, speed: numberOf("speech-speed") };
      const blob = await (await postJson("v1/audio/speech", body)).blob();
      const audio = $("speech-audio");
      if (audio.src) URL.revokeObjectURL(audio.src);
      audio.src = URL.createObjectURL(blob);
      audio.hidden = false;
      audio.dataset.bytes = String(blob.size);
      audio.dataset.type = blob.type;
      const took = ((performance.now() - started) / 1000).toFixed(1);
      audio.onloadedmetadata = () => {
        audio.dataset.duration = String(audio.duration);
        $("speech-meta").textContent = `${audio.duration.toFixed(1)} s of ${format} audio · ${blob.size} bytes · made in ${took} s`;
      };
      $("speech-meta").textContent = `${blob.size} bytes of ${format} audio · made in ${took} s`;
    } catch (error) {
      showError("speech-error", error);
    }
  });
});

// -- speech to text ---------------------------------------------------------------------------

function onAudioModel() {
  const model = modelById($("audio-model").value);
  const caps = (model && model.capabilities) || [];
  const previous = $("audio-task").value;
  const tasks = [["transcribe", "transcribe"], ["translate", "translate to English"]].filter(([c]) => caps.includes(c));
  $("audio-task").replaceChildren(...tasks.map(([value, label]) => {
    const option = element("option", "", label);
    option.value = value;
    return option;
  }));
  if (tasks.some(([value]) => value === previous)) $("audio-task").value = previous;
}

$("audio-model").addEventListener("change", onAudioModel);

$("audio-form").addEventListener("submit", (event) => {
  event.preventDefault();
  showError("audio-error", null);
  $("audio-text").textContent = "";
  busy($("audio-send"), async () => {
    try {
      const file = $("audio-file").files[0];
      if (!file) throw new Error("Choose an audio file first.");
      const form = new FormData();
      form.append("file", file, file.name);
      form.append("model", $("audio-model").value);
      const language = $("audio-language").value.trim();
      if (language && $("audio-task").value === "transcribe") form.append("language", language);
      const path = $("audio-task").value === "translate" ? "v1/audio/translations" : "v1/audio/transcriptions";
      const answer = await (await api(path, { method: "POST", body: form })).json();
      $("audio-text").textContent = answer.text;
      $("audio-text").dataset.state = "done";
    } catch (error) {
      showError("audio-error", error);
    }
  });
});

// -- images -----------------------------------------------------------------------------------

function onImageModel() {
  const model = modelById($("image-model").value);
  const caps = (model && model.capabilities) || [];
  $("image-send").hidden = !caps.includes("txt2img");
  $("img2img-controls").hidden = !caps.includes("img2img");
  $("img2img-send").hidden = !caps.includes("img2img");
}

$("image-model").addEventListener("change", onImageModel);

function showImage(b64, started, extra) {
  const img = $("image-output");
  img.src = "data:image/png;base64," + b64;
  $("image-figure").hidden = false;
  img.decode().then(() => {
    img.style.width = `${Math.min(512, Math.max(256, img.naturalWidth))}px`;
    $("image-meta").textContent = `${img.naturalWidth}×${img.naturalHeight} · ${((performance.now() - started) / 1000).toFixed(1)} s${extra}`;
  }).catch(() => showError("image-error", new Error("The gateway answered with an image the browser cannot show.")));
}

function imageFields() {
  const fields = { model: $("image-model").value, prompt: $("image-prompt").value };
  const steps = numberOf("image-steps");
  const seed = numberOf("image-seed");
  if (steps !== undefined) fields.sample_steps = steps;
  if (seed !== undefined) fields.seed = seed;
  return fields;
}

$("image-form").addEventListener("submit", (event) => {
  event.preventDefault();
  showError("image-error", null);
  busy($("image-send"), async () => {
    const started = performance.now();
    try {
      const body = Object.assign(imageFields(), { size: $("image-size").value, n: 1, response_format: "b64_json" });
      const answer = await (await postJson("v1/images/generations", body)).json();
      showImage(answer.data[0].b64_json, started, " · text to image");
    } catch (error) {
      showError("image-error", error);
    }
  });
});

$("img2img-send").addEventListener("click", () => {
  showError("image-error", null);
  busy($("img2img-send"), async () => {
    const started = performance.now();
    try {
      const file = $("img2img-file").files[0];
      if (!file) throw new Error("Choose a picture to transform first.");
      const [width, height] = $("image-size").value.split("x").map(Number);
      const body = Object.assign(imageFields(), {
        image: await readAsDataURL(file), width, height, strength: numberOf("img2img-strength"),
      });
      const answer = await (await postJson("v1/img2img", body)).json();
      showImage(answer.data[0].base64, started, " · from your picture");
    } catch (error) {
      showError("image-error", error);
    }
  });
});

// -- start ------------------------------------------------------------------------------------

window.addEventListener("error", (event) => showError("global-error", event.error || new Error(event.message)));
window.addEventListener("unhandledrejection", (event) => {
  const reason = event.reason || new Error("unknown error");
  if (reason.name !== "AbortError" && reason.status !== 401) showError("global-error", reason);
});

loadModels().catch(() => {});
