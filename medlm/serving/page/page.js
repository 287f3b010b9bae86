// The consultation page: hold-to-talk (or type), replies streamed as text and as speech through the chat API
// (/v1/chat/completions, stream: true, modalities text + audio). The history lives in this tab only and goes
// with every turn (the server keeps no audio); the API key is kept in this tab's memory, never stored.
"use strict";

const RATE_IN = 16000; // what the page sends: mono PCM16 WAV (a third of a 48 kHz recording's bytes)
const RATE_OUT = 24000; // the server's pcm16 replies
const MIN_SECONDS = 0.3;
// what goes with each turn: the newest messages, and the newest clips as audio (older spoken turns as a note);
// the server's default limits are 32 messages and 8 audio inputs a request
const MAX_MESSAGES = 24;
const MAX_CLIPS = 4;
const $ = (id) => document.getElementById(id);

const state = { key: null, history: [], reply: null, recording: null, player: null };
// what the page has received and played (for tests and for anyone debugging a consultation)
const stats = { replies: 0, audioChunks: 0, audioBytes: 0, scheduledSeconds: 0, playerState: "none", stopped: 0 };
window.medlm = { state, stats };

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

function explain(err) {
  if (err instanceof ApiError) {
    if (err.status === 401) return "The API key was not accepted. Reload the page and enter the right key.";
    if (err.status === 413) return "That turn is too large for this server: speak for a shorter time.";
    if (err.status === 429 || err.status === 503) return "The server is busy. Try again in a moment.";
    return `The server could not answer: ${err.message}`;
  }
  if (err && err.name === "NotAllowedError") return "Microphone access was refused: allow it in the browser to talk.";
  if (err && err.name === "NotFoundError") return "No microphone was found. You can still type.";
  if (err && err.name === "NotSupportedError") return "This browser cannot record here (the page needs localhost or HTTPS).";
  if (err instanceof TypeError) return "Cannot reach the server.";
  return `Something went wrong: ${err && err.message ? err.message : err}`;
}

function say(message, error = false) {
  $("status").textContent = message;
  $("status").className = error ? "error" : "";
}

async function api(path, options = {}) {
  const headers = { Authorization: `Bearer ${state.key}`, ...(options.headers || {}) };
  const res = await fetch(path, { ...options, headers });
  if (!res.ok) {
    let message = res.statusText;
    try {
      message = (await res.json()).error.message;
    } catch (_) {}
    throw new ApiError(res.status, message);
  }
  return res;
}

// --- start: the key, the models and the voices ---

async function start(event) {
  event.preventDefault();
  state.key = $("key").value.trim();
  try {
    const models = (await (await api("/v1/models")).json()).data;
    const chat = models.filter((m) => m.kind === "chat");
    $("model").replaceChildren(...chat.map((m) => new Option(m.id === "cascade" ? "cascade (Whisper, then the LLM)" : `${m.id} (end to end)`, m.id)));
    const voices = (chat[0] && chat[0].voices) || [];
    $("voice").replaceChildren(new Option("text only", ""), ...voices.map((v) => new Option(v, v)));
    $("voice").value = voices[0] || "";
    $("key").value = "";
    $("keyform").hidden = true;
    $("app").hidden = false;
    say("Hold the button and speak, or type a message.");
  } catch (err) {
    state.key = null;
    say(explain(err), true);
  }
}

// --- recording: microphone -> AudioWorklet -> 16 kHz mono PCM16 WAV ---

async function startRecording() {
  if (state.recording || state.reply) return;
  const rec = { chunks: [], ready: null };
  state.recording = rec;
  $("talk").classList.add("recording");
  $("talk").textContent = "Listening… release to send";
  rec.ready = (async () => {
    rec.stream = await navigator.mediaDevices.getUserMedia({
      audio: { channelCount: 1, echoCancellation: false, noiseSuppression: false, autoGainControl: false },
    });
    rec.ctx = new AudioContext(); // the device's own rate (not every browser records at any other)
    await rec.ctx.audioWorklet.addModule("/page/capture.js");
    const node = new AudioWorkletNode(rec.ctx, "capture");
    node.port.onmessage = (e) => rec.chunks.push(e.data);
    rec.ctx.createMediaStreamSource(rec.stream).connect(node);
  })();
  try {
    await rec.ready;
  } catch (err) {
    finishRecording(rec);
    say(explain(err), true);
  }
}

function finishRecording(rec) {
  if (rec.stream) rec.stream.getTracks().forEach((t) => t.stop());
  if (rec.ctx) rec.ctx.close();
  state.recording = null;
  $("talk").classList.remove("recording");
  $("talk").textContent = "Hold to talk";
}

async function stopRecording() {
  const rec = state.recording;
  if (!rec) return;
  try {
    await rec.ready;
  } catch (_) {
    return; // startRecording reported it
  }
  const rate = rec.ctx.sampleRate;
  finishRecording(rec);
  const recorded = concat(rec.chunks);
  if (recorded.length < MIN_SECONDS * rate) {
    say("Hold the button for as long as you speak.", true);
    return;
  }
  const wav = encodeWav(await resample(recorded, rate, RATE_IN), RATE_IN);
  const content = [{ type: "input_audio", input_audio: { data: toBase64(wav), format: "wav" } }];
  await turn(content, { clip: URL.createObjectURL(new Blob([wav], { type: "audio/wav" })) });
}

function concat(chunks) {
  const out = new Float32Array(chunks.reduce((n, c) => n + c.length, 0));
  let at = 0;
  for (const c of chunks) {
    out.set(c, at);
    at += c.length;
  }
  return out;
}

async function resample(samples, rate, target) {
  if (rate === target) return samples;
  const offline = new OfflineAudioContext(1, Math.ceil((samples.length * target) / rate), target);
  const buffer = offline.createBuffer(1, samples.length, rate);
  buffer.getChannelData(0).set(samples);
  const source = offline.createBufferSource();
  source.buffer = buffer;
  source.connect(offline.destination);
  source.start();
  return (await offline.startRendering()).getChannelData(0);
}

function encodeWav(samples, rate) {
  const view = new DataView(new ArrayBuffer(44 + samples.length * 2));
  const text = (at, s) => [...s].forEach((ch, i) => view.setUint8(at + i, ch.charCodeAt(0)));
  text(0, "RIFF");
  view.setUint32(4, 36 + samples.length * 2, true);
  text(8, "WAVEfmt ");
  view.setUint32(16, 16, true);
  view.setUint16(20, 1, true); // PCM
  view.setUint16(22, 1, true); // mono
  view.setUint32(24, rate, true);
  view.setUint32(28, rate * 2, true);
  view.setUint16(32, 2, true);
  view.setUint16(34, 16, true);
  text(36, "data");
  view.setUint32(40, samples.length * 2, true);
  samples.forEach((x, i) => view.setInt16(44 + i * 2, Math.max(-1, Math.min(1, x)) * 32767, true));
  return new Uint8Array(view.buffer);
}

function toBase64(bytes) {
  let s = "";
  for (let i = 0; i < bytes.length; i += 0x8000) s += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return btoa(s);
}

// --- the reply's speech: pcm16 sentences played in order as they arrive ---

class Player {
  constructor() {
    this.ctx = new AudioContext({ sampleRate: RATE_OUT });
    this.next = 0;
    this.sources = [];
  }
  play(base64) {
    const bytes = Uint8Array.from(atob(base64), (c) => c.charCodeAt(0));
    const pcm = new Int16Array(bytes.buffer, 0, bytes.length >> 1);
    stats.audioChunks += 1;
    stats.audioBytes += bytes.length;
    if (!pcm.length) return;
    const buffer = this.ctx.createBuffer(1, pcm.length, RATE_OUT);
    buffer.getChannelData(0).set(Float32Array.from(pcm, (x) => x / 32768));
    const source = this.ctx.createBufferSource();
    source.buffer = buffer;
    source.connect(this.ctx.destination);
    this.next = Math.max(this.next, this.ctx.currentTime + 0.05);
    source.start(this.next);
    this.next += buffer.duration;
    stats.scheduledSeconds += buffer.duration;
    stats.playerState = this.ctx.state;
    this.sources.push(source);
    source.onended = () => (this.sources = this.sources.filter((s) => s !== source));
  }
  stop() {
    this.sources.forEach((s) => s.stop());
    this.sources = [];
    this.next = 0;
  }
}

// --- a turn: the history + this turn, streamed back ---

function bubble(role, text = "", clip = null) {
  const li = document.createElement("li");
  li.className = role;
  const who = document.createElement("span");
  who.className = "who";
  who.textContent = role === "user" ? "You" : "medlm";
  const body = document.createElement("span");
  body.className = "text";
  body.textContent = text;
  li.append(who, body);
  if (clip) {
    const audio = document.createElement("audio");
    audio.controls = true;
    audio.src = clip;
    li.append(audio);
  }
  $("history").append(li);
  li.scrollIntoView({ block: "end" });
  return li;
}

function busy(on) {
  $("stop").disabled = !on;
  $("talk").disabled = on;
  $("send").disabled = on;
}

function outgoing(history) {
  let clips = 0;
  return history
    .slice(-MAX_MESSAGES)
    .reverse()
    .map((m) => {
      const spoken = Array.isArray(m.content) && m.content.some((p) => p.type === "input_audio");
      return spoken && ++clips > MAX_CLIPS ? { role: m.role, content: "(an earlier spoken turn)" } : m;
    })
    .reverse();
}

async function turn(content, { clip = null, text = "" } = {}) {
  const voice = $("voice").value;
  if (voice && !state.player) state.player = new Player(); // made inside the user's gesture: allowed to play
  const history = state.history; // this consultation's (a new consultation starts another list)
  history.push({ role: "user", content });
  bubble("user", text, clip);
  const li = bubble("assistant");
  const out = li.querySelector(".text");
  const controller = new AbortController();
  state.reply = controller;
  busy(true);
  say("medlm is answering…");
  const body = {
    model: $("model").value,
    messages: outgoing(history),
    stream: true,
    ...($("max-tokens").value ? { max_tokens: Number($("max-tokens").value) } : {}),
    ...(voice ? { modalities: ["text", "audio"], audio: { voice, format: "pcm16" } } : {}),
  };
  let reply = "";
  try {
    const res = await api("/v1/chat/completions", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
      signal: controller.signal,
    });
    for await (const event of sse(res)) {
      if (event.error) throw new ApiError(500, event.error.message);
      const delta = (event.choices && event.choices[0] && event.choices[0].delta) || {};
      if (delta.content) {
        reply += delta.content;
        out.textContent = reply;
      }
      if (delta.audio && delta.audio.data && state.player) state.player.play(delta.audio.data);
    }
    say("");
  } catch (err) {
    if (err.name === "AbortError") {
      li.classList.add("stopped");
      stats.stopped += 1;
      say("Stopped.");
    } else {
      say(explain(err), true);
    }
  } finally {
    state.reply = null;
    busy(false);
    stats.replies += 1;
    if (reply) history.push({ role: "assistant", content: reply });
    else if (!li.classList.contains("stopped")) history.pop(); // nothing came back: the turn is not kept
  }
}

async function* sse(res) {
  const reader = res.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const line = buffer.slice(0, end).trim();
      buffer = buffer.slice(end + 2);
      if (!line.startsWith("data:")) continue;
      const data = line.slice(5).trim();
      if (data === "[DONE]") return;
      yield JSON.parse(data);
    }
  }
}

function stop() {
  if (state.reply) state.reply.abort(); // the server frees the reply's decode slot when the stream closes
  if (state.player) state.player.stop();
}

function newConsultation() {
  stop();
  state.history = [];
  $("history").replaceChildren();
  say("New consultation.");
}

// --- wiring ---

$("keyform").addEventListener("submit", start);
$("typed").addEventListener("submit", (e) => {
  e.preventDefault();
  const text = $("text").value.trim();
  if (!text || state.reply) return;
  $("text").value = "";
  turn(text, { text });
});
$("talk").addEventListener("pointerdown", (e) => {
  e.preventDefault();
  startRecording();
});
["pointerup", "pointerleave", "pointercancel"].forEach((type) => $("talk").addEventListener(type, stopRecording));
document.addEventListener("keydown", (e) => {
  if (e.code === "Space" && !e.repeat && document.activeElement !== $("text") && !$("app").hidden) {
    e.preventDefault();
    startRecording();
  }
});
document.addEventListener("keyup", (e) => {
  if (e.code === "Space" && state.recording) stopRecording();
});
$("stop").addEventListener("click", stop);
$("new").addEventListener("click", newConsultation);
