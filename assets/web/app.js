// The pcmcast player page: plays /stream.pcm through WebAudio and shows the stream, the
// listeners and the level of what it plays.
//
// Three things run at once:
// - the status poll (this page's event loop, once a second) fills in /status;
// - the fetch loop (this page's event loop too, suspended at each network read) turns the bytes
//   of /stream.pcm?format=f32le into Float32Arrays of whole sample frames and transfers them to
//   the worklet; it reconnects with backoff while the player is on;
// - the worklet (worklet.js, on the audio rendering thread) buffers, plays, measures the level
//   and reports back through its port about ten times a second.
// The page and the worklet share no memory: samples move by transfer, reports are copies.
//
// State for tests and for the curious: window.pcmcast.

// Jitter buffer (see worklet.js): the least audio queued when playback starts, beyond one
// server frame, and how much more may queue up before the oldest is dropped.
const CUSHION_MS = 150;
const SLACK_MS = 350;
const BACKOFF_MIN_MS = 250;
const BACKOFF_MAX_MS = 5000;
const STATUS_PERIOD_MS = 1000;

// Opened as /?token=T: every request this page makes carries it.
const token = new URLSearchParams(location.search).get("token");

function endpoint(path) {
  const url = new URL(path, location.href);
  if (token) url.searchParams.set("token", token);
  return url;
}

const $ = (id) => document.getElementById(id);

// What one playback session counts, as it is when Play is pressed.
function freshCounters() {
  return {
    bytesReceived: 0,
    samplesReceived: 0,
    framesRendered: 0,
    underruns: 0,
    reconnects: 0,
    droppedMs: 0,
    bufferedMs: 0,
    behind: false,
  };
}

const pcmcast = {
  state: "stopped", // stopped | connecting | buffering | playing | reconnecting
  stream: null, // {rate, channels, frameSize} from /status, then from the stream's headers
  source: null, // {kind, name, state} from /status
  listeners: null,
  ...freshCounters(),
  level: { rmsDbfs: null, peakDbfs: null },
  audio: null, // {state, sampleRate} of the AudioContext
  notice: null, // what #notice says: why it is reconnecting, or that it is behind
  statusError: null, // why /status failed, if it did
};
window.pcmcast = pcmcast;

// The running player, or null when stopped. Each async step checks that it is still the
// current one: Stop can happen at any await.
let session = null;

$("play").addEventListener("click", () => (session ? stop() : play()));

function play() {
  // Created in the click handler: browsers start an AudioContext only from a user gesture.
  const ctx = createContext(pcmcast.stream?.rate);
  const s = { ctx, abort: new AbortController(), node: null };
  session = s;
  Object.assign(pcmcast, freshCounters());
  $("play").textContent = "Stop";
  $("play").classList.add("playing");
  setState("connecting");
  run(s).catch((error) => {
    if (session === s) {
      stop();
      showNotice(`cannot play: ${error.message}`, true);
    }
  });
}

function stop() {
  const s = session;
  session = null;
  // Aborting the fetch closes the connection: the server drops this listener at once.
  s.abort.abort();
  s.ctx.close();
  $("play").textContent = "Play";
  $("play").classList.remove("playing");
  setState("stopped");
  showNotice(null);
  pcmcast.audio = null;
  $("audio").textContent = "–";
  showLevel({ rmsDbfs: null, peakDbfs: null });
}

// An AudioContext at the stream's rate, so that samples play as they are. A browser that
// refuses that rate gets its default one, and the worklet resamples (linearly).
function createContext(rate) {
  try {
    return new AudioContext({ sampleRate: rate, latencyHint: "playback" });
  } catch {
    return new AudioContext({ latencyHint: "playback" });
  }
}

async function run(s) {
  await s.ctx.audioWorklet.addModule("worklet.js");
  if (session !== s) return;
  s.node = new AudioWorkletNode(s.ctx, "pcm-player", {
    numberOfInputs: 0,
    outputChannelCount: [pcmcast.stream?.channels ?? 2],
    processorOptions: { cushionMs: CUSHION_MS, slackMs: SLACK_MS },
  });
  s.node.port.onmessage = ({ data }) => session === s && showPlayback(s, data);
  s.node.connect(s.ctx.destination);
  await s.ctx.resume();
  await fetchLoop(s);
}

// Connects, streams until the connection fails or ends, and tries again with exponential
// backoff (reset by every connection that delivers audio) until Stop.
async function fetchLoop(s) {
  let backoffMs = BACKOFF_MIN_MS;
  while (session === s) {
    let reason = "the stream ended";
    try {
      await receive(s, () => (backoffMs = BACKOFF_MIN_MS));
    } catch (error) {
      reason = error.message;
    }
    if (session !== s) return; // Stop aborted the fetch: not an error
    pcmcast.reconnects++;
    setState("reconnecting");
    showNotice(`${reason}; reconnecting in ${(backoffMs / 1000).toFixed(1)} s`, true);
    await new Promise((resolve) => setTimeout(resolve, backoffMs));
    backoffMs = Math.min(2 * backoffMs, BACKOFF_MAX_MS);
  }
}

async function receive(s, onAudio) {
  const response = await fetch(endpoint("stream.pcm?format=f32le"), {
    signal: s.abort.signal,
    cache: "no-store",
  });
  if (!response.ok) throw new Error(await errorMessage(response));
  const format = {
    rate: Number(response.headers.get("X-Pcm-Rate")),
    channels: Number(response.headers.get("X-Pcm-Channels")),
    frameSize: Number(response.headers.get("X-Pcm-Frame-Size")),
  };
  showStream(format);
  s.node.port.postMessage({ format });
  setState("buffering");
  showNotice(null);

  // Network chunks split the stream anywhere, even inside a sample: `carry` keeps the bytes
  // of an incomplete sample frame for the next chunk, so the worklet only sees whole frames.
  const frameBytes = 4 * format.channels;
  let carry = new Uint8Array(0);
  const reader = response.body.getReader();
  for (;;) {
    const { done, value } = await reader.read();
    if (done || session !== s) return;
    pcmcast.bytesReceived += value.byteLength;
    const bytes = carry.length ? concat(carry, value) : value;
    const whole = bytes.byteLength - (bytes.byteLength % frameBytes);
    carry = bytes.slice(whole);
    if (whole === 0) continue;
    const view = new DataView(bytes.buffer, bytes.byteOffset, whole);
    const samples = new Float32Array(whole / 4);
    for (let i = 0; i < samples.length; i++) samples[i] = view.getFloat32(4 * i, true);
    s.node.port.postMessage({ samples }, [samples.buffer]);
    onAudio();
  }
}

function concat(a, b) {
  const joined = new Uint8Array(a.length + b.length);
  joined.set(a);
  joined.set(b, a.length);
  return joined;
}

// pcmcast's errors are JSON {"error": "…"}; anything else is shown by its status.
async function errorMessage(response) {
  try {
    return (await response.json()).error ?? `HTTP ${response.status}`;
  } catch {
    return `HTTP ${response.status}`;
  }
}

// A report from the worklet (see worklet.js).
function showPlayback(s, report) {
  Object.assign(pcmcast, {
    samplesReceived: report.receivedSamples,
    framesRendered: report.renderedFrames,
    underruns: report.underruns,
    droppedMs: report.droppedMs,
    bufferedMs: report.bufferedMs,
    behind: report.behind,
    audio: { state: s.ctx.state, sampleRate: s.ctx.sampleRate },
  });
  if (pcmcast.state === "buffering" || pcmcast.state === "playing") {
    setState(report.buffering ? "buffering" : "playing");
  }
  if (pcmcast.state !== "reconnecting") {
    showNotice(report.behind ? "behind: dropping old audio to catch up" : null);
  }
  showLevel({ rmsDbfs: dbfs(report.rms), peakDbfs: dbfs(report.peak) });
  $("buffered").textContent = Math.round(report.bufferedMs);
  $("underruns").textContent = report.underruns;
  $("dropped").textContent = Math.round(report.droppedMs);
  $("received").textContent = Math.round(pcmcast.bytesReceived / 1024);
  const resampled = s.ctx.sampleRate !== pcmcast.stream?.rate ? ", resampled" : "";
  $("audio").textContent = `${s.ctx.state}, ${s.ctx.sampleRate} Hz${resampled}`;
}

function showLevel(level) {
  pcmcast.level = level;
  $("level-rms").textContent = formatDb(level.rmsDbfs);
  $("level-peak").textContent = formatDb(level.peakDbfs);
  $("meter-rms").style.clipPath = `inset(0 ${100 - meterPercent(level.rmsDbfs)}% 0 0)`;
  $("meter-peak").style.left = `${meterPercent(level.peakDbfs)}%`;
}

// Decibels relative to full scale; null for silence (as in /status).
function dbfs(linear) {
  return linear > 0 ? 20 * Math.log10(linear) : null;
}

function formatDb(db) {
  return db === null ? "-∞" : db.toFixed(1);
}

const METER_FLOOR_DB = -60;

function meterPercent(db) {
  if (db === null) return 0;
  return Math.min(100, Math.max(0, (100 * (db - METER_FLOOR_DB)) / -METER_FLOOR_DB));
}

function setState(state) {
  pcmcast.state = state;
  $("state").textContent = state;
}

function showNotice(text, error = false) {
  pcmcast.notice = text;
  const notice = $("notice");
  notice.hidden = !text;
  notice.textContent = text ?? "";
  notice.classList.toggle("error", error);
}

function showStream({ rate, channels, frameSize }) {
  pcmcast.stream = { rate, channels, frameSize };
  $("rate").textContent = rate;
  $("channels").textContent = channels;
  $("frame-size").textContent = frameSize;
  showCommands(rate, channels);
}

// The README's client commands, for this server (and token) and this stream.
function showCommands(rate, channels) {
  const layout = { 1: "mono", 2: "stereo" }[channels] ?? `${channels}c`;
  // Quoted only where the shell would otherwise see `?` or `&`.
  const url = (path) => {
    const text = endpoint(path).href;
    return /[?&]/.test(text) ? `'${text}'` : text;
  };
  $("cmd-wav").textContent = `ffplay -nodisp ${url("stream.wav")}`;
  $("cmd-pcm").textContent =
    `curl -sN ${url("stream.pcm")} | ffplay -f f32le -ar ${rate} -ch_layout ${layout} -`;
  $("cmd-ndjson").textContent = `curl -sN ${url("stream.ndjson?frames=5")}`;
}

async function pollStatus() {
  try {
    const response = await fetch(endpoint("status"), { cache: "no-store" });
    if (!response.ok) throw new Error(await errorMessage(response));
    showStatus(await response.json());
    pcmcast.statusError = null;
  } catch (error) {
    pcmcast.statusError = error.message;
    $("source-state").textContent = `unknown (/status: ${error.message})`;
  }
  setTimeout(pollStatus, STATUS_PERIOD_MS);
}

function showStatus({ source, listeners }) {
  pcmcast.source = { kind: source.kind, name: source.name, state: source.state };
  pcmcast.listeners = listeners.current;
  $("source-name").textContent = `${source.kind}: ${source.name}`;
  $("source-state").textContent = source.state;
  $("listeners").textContent = listeners.current;
  $("listeners-peak").textContent = listeners.peak;
  $("listeners-total").textContent = listeners.total;
  // While playing, the stream's own headers are authoritative.
  if (!session || !pcmcast.stream) {
    showStream({ rate: source.rate, channels: source.channels, frameSize: source.frame_size });
  }
}

pollStatus();
