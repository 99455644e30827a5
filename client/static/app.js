// Unseen browser client: live processed video over WebRTC, clicks/objects/effects over the WebSocket.
// No external scripts or network: everything comes from the serving origin.
"use strict";

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const token = params.get("token");
const EFFECTS = ["remove", "blur", "pixelate", "fill", "overlay"];
const DRAG_PX = 6;   // a press that moves less than this (CSS pixels) before release is a click, more a box

const state = {
  stream: null, pc: null, ws: null, channel: null, camera: null,
  objects: [], selected: null, info: null,
  meta: new Map(),            // track timestamp -> {pts, index, src, ...} of frames sent to us
  votes: new Map(), offset: null,   // RTP timestamp = offset + track timestamp (mod 2^32)
  current: null,              // metadata of the frame on screen
  shown: 0, shownT0: null, fps: 0, g2g: [], lastError: "",
  nextId: 1, waiting: new Map(),
  drag: null,                 // {x, y, shift}: where a press started (client pixels), while the button is down
};

function authed(url) {
  if (!token) return url;
  return url + (url.includes("?") ? "&" : "?") + "token=" + encodeURIComponent(token);
}

function showError(msg) { state.lastError = msg || ""; $("error").textContent = state.lastError; }
function setStatus(msg) { $("status").textContent = msg; }

// ------------------------------------------------------------------------------ REST
async function api(method, path, body) {
  const headers = { "Content-Type": "application/json" };
  if (token) headers.Authorization = "Bearer " + token;
  const r = await fetch(path, { method, headers, body: body ? JSON.stringify(body) : undefined });
  const data = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error(data.error || `${method} ${path}: HTTP ${r.status}`);
  return data;
}

async function loadSources() {
  const sel = $("source");
  sel.innerHTML = "";
  let streams = [];
  try { streams = await api("GET", "/api/streams"); } catch (e) { showError(e.message); }
  for (const s of streams.filter((s) => s.kind !== "webcam")) {
    const o = document.createElement("option");
    o.value = "stream:" + s.name; o.textContent = `${s.name} (${s.kind})`;
    sel.appendChild(o);
  }
  const cam = document.createElement("option");
  cam.value = "webcam"; cam.textContent = "this browser's webcam";
  sel.appendChild(cam);
  const want = params.get("source") === "webcam" ? "webcam" : params.get("stream") ? "stream:" + params.get("stream") : null;
  if (want && [...sel.options].some((o) => o.value === want)) sel.value = want;
}

// ------------------------------------------------------------------------------ WebSocket control
function connectWs() {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(authed(`${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`));
    ws.onopen = () => resolve(ws);
    ws.onerror = () => reject(new Error("cannot open the control WebSocket; check the server and the token"));
    ws.onclose = () => { if (state.ws === ws) { state.ws = null; setStatus("control channel closed"); } };
    ws.onmessage = (ev) => {
      const msg = JSON.parse(ev.data);
      if (msg.type === "stats") { if (msg.stream === state.stream) updateInfo(msg.state); return; }
      if (msg.type === "closed") { setStatus(`stream ${msg.stream} closed`); return; }
      const w = state.waiting.get(msg.id);
      if (w) { state.waiting.delete(msg.id); msg.ok ? w.resolve(msg.result) : w.reject(new Error(msg.error)); }
      else if (!msg.ok && msg.error) showError(msg.error);
    };
  });
}

function control(op, fields) {
  if (!state.ws) return Promise.reject(new Error("no control channel; press Watch"));
  const id = state.nextId++;
  return new Promise((resolve, reject) => {
    state.waiting.set(id, { resolve, reject });
    state.ws.send(JSON.stringify({ id, op, stream: state.stream, ...fields }));
    setTimeout(() => { if (state.waiting.delete(id)) reject(new Error(`no reply to ${op} in 90 s`)); }, 90000);
  });
}

// ------------------------------------------------------------------------------ WebRTC
function waitIce(pc, ms) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => { if (pc.iceGatheringState === "complete") resolve(); };
    pc.addEventListener("icegatheringstatechange", done);
    setTimeout(resolve, ms);
  });
}

async function disconnect() {
  if (state.pc) { state.pc.close(); state.pc = null; }
  if (state.camera) { state.camera.getTracks().forEach((t) => t.stop()); state.camera = null; }
  if (state.ws) { const ws = state.ws; state.ws = null; ws.close(); }
  state.meta.clear(); state.votes.clear(); state.offset = null; state.current = null;
  state.shown = 0; state.shownT0 = null; state.g2g = [];
}

// The camera with its microphone; the camera alone when there is no microphone or it is refused.
async function openCamera(w, h) {
  const video = { width: w, height: h };
  try {
    return await navigator.mediaDevices.getUserMedia({ video, audio: true });
  } catch (err) {
    return await navigator.mediaDevices.getUserMedia({ video, audio: false });
  }
}

async function connect() {
  await disconnect();
  showError("");
  const choice = $("source").value;
  const webcam = choice === "webcam";
  state.stream = webcam ? (params.get("name") || "webcam-" + Math.random().toString(36).slice(2, 8)) : choice.slice(7);
  setStatus("connecting…");
  const pc = new RTCPeerConnection({ iceServers: [] });
  state.pc = pc;
  const channel = pc.createDataChannel("meta", { ordered: false, maxRetransmits: 0 });
  channel.onmessage = (ev) => onMeta(JSON.parse(ev.data));
  state.channel = channel;
  if (webcam) {
    const w = +(params.get("width") || 640), h = +(params.get("height") || 480);
    state.camera = await openCamera(w, h);
    pc.addTransceiver(state.camera.getVideoTracks()[0], { direction: "sendrecv" });
    const mic = state.camera.getAudioTracks()[0];  // its sound comes back delayed with the video
    pc.addTransceiver(mic || "audio", { direction: mic ? "sendrecv" : "recvonly" });
  } else {
    pc.addTransceiver("video", { direction: "recvonly" });
    pc.addTransceiver("audio", { direction: "recvonly" });  // the source's audio, if it has any
  }
  const received = new MediaStream();
  $("video").srcObject = received;
  pc.ontrack = (ev) => received.addTrack(ev.track);
  pc.onconnectionstatechange = () => setStatus(`${state.stream}: ${pc.connectionState}`);
  await pc.setLocalDescription(await pc.createOffer());
  await waitIce(pc, 3000);
  const answer = await api("POST", `/api/streams/${encodeURIComponent(state.stream)}/offer`,
    { sdp: pc.localDescription.sdp, type: pc.localDescription.type, publish: webcam });
  await pc.setRemoteDescription(answer);
  state.ws = await connectWs();
  await control("subscribe", { every: 0.5 });
  updateInfo(await control("state", {}));
  if (webcam) await loadSources();
}

// ------------------------------------------------------------------------------ which frame is on screen
function onMeta(m) {
  if (m.type !== "frame") return;
  state.meta.set(m.ts, m);
  if (state.meta.size > 600) state.meta.delete(state.meta.keys().next().value);
}

function lookup(rtp) {
  // Find the offset between RTP timestamps and the server's track timestamps by voting:
  // the track timestamps follow the server's clock, so only the true offset matches frame after frame.
  if (state.offset === null) {
    for (const ts of state.meta.keys()) {
      const off = (rtp - ts) >>> 0;
      const n = (state.votes.get(off) || 0) + 1;
      state.votes.set(off, n);
      if (n >= 3) { state.offset = off; break; }
    }
    if (state.votes.size > 50000) state.votes.clear();
    if (state.offset === null) return null;
  }
  const m = state.meta.get((rtp - state.offset) >>> 0);
  return m || null;
}

function onVideoFrame(now, md) {
  const m = md.rtpTimestamp !== undefined ? lookup(md.rtpTimestamp) : null;
  const fallback = m || [...state.meta.values()].pop() || null;   // no RTP timestamp: the newest sent
  if (fallback) state.current = fallback;
  if (m) {
    const g2g = (performance.timeOrigin + now) / 1000 - m.src;
    state.g2g.push(g2g);
    if (state.g2g.length > 300) state.g2g.shift();
  }
  state.shown++;
  if (state.shownT0 === null) state.shownT0 = now;
  else if (now > state.shownT0) state.fps = (state.shown - 1) / ((now - state.shownT0) / 1000);
  if (state.shown > 150) { state.shown = 1; state.shownT0 = now; }
  $("video").requestVideoFrameCallback(onVideoFrame);
}

// ------------------------------------------------------------------------------ clicks and boxes
function framePoint(ev) {
  const v = $("video");
  const r = v.getBoundingClientRect();
  const vw = v.videoWidth, vh = v.videoHeight;
  if (!vw || !vh) return null;
  const scale = Math.min(r.width / vw, r.height / vh);      // object-fit: contain
  const ox = (r.width - vw * scale) / 2, oy = (r.height - vh * scale) / 2;
  return { x: (ev.clientX - r.left - ox) / scale, y: (ev.clientY - r.top - oy) / scale };
}

const tenth = (v) => Math.round(v * 10) / 10;

async function prompt(fields, busy) {
  if (state.current) { fields.pts = state.current.pts; }     // the source frame the user saw
  setStatus(busy);
  try {
    const r = await control("click", fields);
    showError("");  // an earlier refusal no longer stands
    state.selected = r.object;
    renderObjects(r.objects);
    setStatus(`${state.stream}: object ${r.object}`);
  } catch (e) { showError(e.message); setStatus(`${state.stream}: refused`); }
}

function onClick(ev, negative) {
  ev.preventDefault();
  const p = framePoint(ev);
  if (!p || !state.stream) return;
  const fields = { x: tenth(p.x), y: tenth(p.y), positive: !negative };
  if (negative) fields.object = state.selected;
  prompt(fields, negative ? "correcting…" : "selecting…");
}

// A drag draws a box: a new object, or with shift the selected object's new box (the server clips it to the frame).
function onBox(start, end, refine) {
  const a = framePoint(start), b = framePoint(end);
  if (!a || !b || !state.stream) return;
  const fields = { box: [tenth(Math.min(a.x, b.x)), tenth(Math.min(a.y, b.y)), tenth(Math.max(a.x, b.x)),
                         tenth(Math.max(a.y, b.y))] };
  if (refine && state.selected !== null) fields.object = state.selected;
  prompt(fields, "selecting the box…");
}

function showRubber(start, ev) {
  const wrap = $("video").parentElement.getBoundingClientRect(), band = $("rubber");
  band.style.left = `${Math.min(start.x, ev.clientX) - wrap.left}px`;
  band.style.top = `${Math.min(start.y, ev.clientY) - wrap.top}px`;
  band.style.width = `${Math.abs(ev.clientX - start.x)}px`;
  band.style.height = `${Math.abs(ev.clientY - start.y)}px`;
  band.hidden = false;
}

const dragged = (start, ev) => Math.hypot(ev.clientX - start.x, ev.clientY - start.y) >= DRAG_PX;

function onPointerDown(ev) {
  if (ev.button !== 0) return;
  ev.preventDefault();
  $("video").setPointerCapture(ev.pointerId);
  state.drag = { x: ev.clientX, y: ev.clientY, shift: ev.shiftKey };
}

function onPointerMove(ev) {
  if (state.drag && dragged(state.drag, ev)) showRubber(state.drag, ev);
}

function onPointerUp(ev) {
  const start = state.drag;
  state.drag = null;
  $("rubber").hidden = true;
  if (!start) return;
  if (dragged(start, ev)) onBox({ clientX: start.x, clientY: start.y }, ev, start.shift || ev.shiftKey);
  else onClick(ev, start.shift || ev.shiftKey);
}

function onPointerCancel() { state.drag = null; $("rubber").hidden = true; }

// ------------------------------------------------------------------------------ objects and stats
function renderObjects(objects) {
  state.objects = objects || [];
  const ul = $("objects");
  ul.innerHTML = "";
  for (const o of state.objects) {
    const li = document.createElement("li");
    if (o.id === state.selected) li.className = "selected";
    const label = document.createElement("span");
    label.textContent = `#${o.id}` + (o.area ? ` (${o.area} px)` : "") + (o.box ? " ▭" : "");
    if (o.box) label.title = `box ${o.box.join(", ")} on frame ${o.prompt_frame}`;
    label.onclick = () => { state.selected = o.id; renderObjects(state.objects); };
    const sel = document.createElement("select");
    for (const e of EFFECTS) { const opt = new Option(e, e, false, e === o.effect); sel.appendChild(opt); }
    sel.onchange = () => control("effect", { object: o.id, effect: sel.value }).then((r) => renderObjects(r.objects)).catch((e) => showError(e.message));
    const rm = document.createElement("button");
    rm.textContent = "remove";
    rm.onclick = () => control("remove", { object: o.id }).then((r) => renderObjects(r.objects)).catch((e) => showError(e.message));
    li.append(label, sel, rm);
    ul.appendChild(li);
  }
}

function updateInfo(info) {
  state.info = info;
  const median = (a) => { if (!a.length) return null; const s = [...a].sort((x, y) => x - y); return s[Math.floor(s.length / 2)]; };
  const g = median(state.g2g);
  $("s-stream").textContent = `${info.name} ${info.width || "?"}x${info.height || "?"} (${info.state})`;
  $("s-fps").textContent = `${info.fps.toFixed(1)} / ${state.fps.toFixed(1)}`;
  $("s-delay").textContent = `${info.delay_frames} frames (${info.delay_seconds ?? "?"} s)`;
  $("s-g2g").textContent = g === null ? "–" : `${(g * 1000).toFixed(0)} ms`;
  $("s-seg").textContent = info.backends.segmenter || "–";
  $("s-prop").textContent = info.backends.propagator || "–";
  $("s-inp").textContent = info.backends.inpainter || "–";
  $("s-drop").textContent = `${info.dropped} / ${info.degraded}`;
  const d = info.degradation || {};  // output frames per degradation level (engine/degrade.py)
  $("s-degrade").textContent = `fill ${d.cheap_fill ?? 0} / tracking ${d.reduced_tracking ?? 0} / stale ${d.stale_masks ?? 0}`;
  const ids = (info.objects || []).map((o) => `${o.id}:${o.effect}`).join(",");
  if (ids !== state.objects.map((o) => `${o.id}:${o.effect}`).join(",")) renderObjects(info.objects);
}

// ------------------------------------------------------------------------------ for tests and scripts
window.unseen = {
  state,
  connect,
  // RGBA pixels of the frame on screen, at the video's own size (a canvas copy)
  grab() {
    const v = $("video"), c = $("grab");
    c.width = v.videoWidth; c.height = v.videoHeight;
    const ctx = c.getContext("2d", { willReadFrequently: true });
    ctx.drawImage(v, 0, 0);
    const d = ctx.getImageData(0, 0, c.width, c.height).data;
    let s = "";
    for (let i = 0; i < d.length; i += 32768) s += String.fromCharCode.apply(null, d.subarray(i, i + 32768));
    return { width: c.width, height: c.height, rgba: btoa(s) };
  },
  stats() {
    const a = [...state.g2g].sort((x, y) => x - y);
    return { fps: state.fps, g2g_median: a.length ? a[Math.floor(a.length / 2)] : null, g2g_n: a.length,
             current: state.current, offset: state.offset, info: state.info, error: state.lastError };
  },
};

// ------------------------------------------------------------------------------ wiring
$("connect").onclick = () => connect().catch((e) => { showError(e.message); setStatus("not connected"); });
$("sound").onclick = () => {  // muted until asked: autoplay, and no echo of a webcam's own microphone
  const v = $("video");
  v.muted = !v.muted;
  $("sound").textContent = v.muted ? "Sound on" : "Sound off";
};
$("clear").onclick = () => control("clear", {}).then((r) => renderObjects(r.objects)).catch((e) => showError(e.message));
$("video").addEventListener("pointerdown", onPointerDown);
$("video").addEventListener("pointermove", onPointerMove);
$("video").addEventListener("pointerup", onPointerUp);
$("video").addEventListener("pointercancel", onPointerCancel);
$("video").addEventListener("contextmenu", (ev) => onClick(ev, true));
if ("requestVideoFrameCallback" in HTMLVideoElement.prototype) $("video").requestVideoFrameCallback(onVideoFrame);
loadSources().then(() => { if (params.get("autoplay")) $("connect").click(); });
