// The pcmcast player's AudioWorkletProcessor: a jitter buffer between the network and the
// speakers, and the level meter of what is actually played.
//
// It runs on the audio rendering thread. process() is called for every render quantum (128
// frames) and must never block: when the buffer is empty it plays silence and counts an
// underrun. The page (app.js) talks to it only through the port: `{format}` when a connection
// starts, then `{samples}` (Float32Array of interleaved whole sample frames, transferred, not
// copied). Port messages are delivered on this same thread between process() calls, so the
// queue needs no lock. Reports go back to the page about ten times a second.

const REPORT_MS = 100;
// How long after the last drop the player still says it is behind.
const BEHIND_HOLD_S = 1;

class PcmPlayer extends AudioWorkletProcessor {
  constructor({ processorOptions: { cushionMs, slackMs } }) {
    super();
    this.cushionMs = cushionMs;
    this.slackMs = slackMs;
    this.channels = 0; // 0 until the first {format}: silence
    // Chunks of interleaved samples, oldest first; `head` is the read index into queue[0].
    this.queue = [];
    this.head = 0;
    this.bufferedFrames = 0;
    // Linear resampler state: the output is at `frac` between sample frames `prev` and `next`
    // of the stream, and advances by `step` stream frames per output frame (exactly 1, and so
    // no interpolation at all, when the AudioContext runs at the stream's rate).
    this.prev = new Float32Array(0);
    this.next = new Float32Array(0);
    this.frac = 0;
    this.step = 1;
    // Waiting for the buffer to reach its target, at the start and after an underrun.
    this.buffering = true;

    this.receivedSamples = 0;
    this.renderedFrames = 0;
    this.underruns = 0;
    this.droppedFrames = 0;
    this.lastDropTime = -Infinity;
    this.sumSquares = 0;
    this.peak = 0;
    this.measured = 0;
    this.quanta = 0;
    this.reportEveryQuanta = Math.max(1, Math.round((sampleRate * REPORT_MS) / 1000 / 128));

    this.port.onmessage = ({ data }) =>
      data.format ? this.setFormat(data.format) : this.enqueue(data.samples);
  }

  // A (re)connection's stream format. The same format continues the queued audio; a new one
  // (the server restarted differently) drops it.
  //
  // Audio arrives a whole server frame at a time, so the buffer swings by a frame between
  // arrivals. Playback starts at the target, a frame plus the cushion, so that the cushion is
  // left just before the next frame arrives; past a frame plus the slack above the target,
  // audio is arriving faster than it plays.
  setFormat({ rate, channels, frameSize }) {
    if (channels !== this.channels || rate !== this.rate || frameSize !== this.frameSize) {
      this.rate = rate;
      this.channels = channels;
      this.frameSize = frameSize;
      this.step = rate / sampleRate;
      this.targetFrames = frameSize + Math.round((rate * this.cushionMs) / 1000);
      this.limitFrames = this.targetFrames + frameSize + Math.round((rate * this.slackMs) / 1000);
      this.prev = new Float32Array(channels);
      this.next = new Float32Array(channels);
      this.queue = [];
      this.head = 0;
      this.bufferedFrames = 0;
      this.buffering = true;
    }
  }

  enqueue(samples) {
    this.queue.push(samples);
    this.bufferedFrames += samples.length / this.channels;
    this.receivedSamples += samples.length;
    // Behind: the network delivered faster than we play (a burst, or clock drift). Drop the
    // oldest audio down to the target rather than let the latency grow.
    if (this.bufferedFrames > this.limitFrames) {
      this.drop(this.bufferedFrames - this.targetFrames);
    }
  }

  drop(frames) {
    let samples = frames * this.channels;
    while (samples > 0) {
      const chunk = this.queue[0];
      const n = Math.min(samples, chunk.length - this.head);
      this.head += n;
      samples -= n;
      if (this.head === chunk.length) {
        this.queue.shift();
        this.head = 0;
      }
    }
    this.bufferedFrames -= frames;
    this.droppedFrames += frames;
    this.lastDropTime = currentTime;
  }

  // Moves the next sample frame of the queue into `frame`; false if the queue is empty.
  pop(frame) {
    if (this.bufferedFrames === 0) return false;
    for (let c = 0; c < this.channels; c++) {
      const chunk = this.queue[0];
      frame[c] = chunk[this.head++];
      if (this.head === chunk.length) {
        this.queue.shift();
        this.head = 0;
      }
    }
    this.bufferedFrames--;
    return true;
  }

  process(_inputs, [output]) {
    // Resume once the target is buffered (plus the two frames the resampler holds).
    if (this.buffering && this.channels && this.bufferedFrames >= this.targetFrames + 2) {
      this.pop(this.prev);
      this.pop(this.next);
      this.frac = 0;
      this.buffering = false;
    }
    const frames = output[0].length;
    for (let i = 0; i < frames; i++) {
      for (let o = 0; o < output.length; o++) {
        // A mono stream goes to every output; otherwise stream channel o to output o.
        const c = this.channels === 1 ? 0 : o;
        output[o][i] =
          this.buffering || c >= this.channels
            ? 0
            : this.prev[c] + (this.next[c] - this.prev[c]) * this.frac;
      }
      if (this.buffering) continue;
      this.frac += this.step;
      while (this.frac >= 1) {
        this.frac -= 1;
        [this.prev, this.next] = [this.next, this.prev];
        if (!this.pop(this.next)) {
          this.underruns++;
          this.buffering = true;
          break;
        }
      }
    }
    this.renderedFrames += frames;
    this.measure(output);
    if (++this.quanta % this.reportEveryQuanta === 0) this.report();
    return true;
  }

  measure(output) {
    for (const channel of output) {
      for (const x of channel) {
        this.sumSquares += x * x;
        this.peak = Math.max(this.peak, Math.abs(x));
      }
      this.measured += channel.length;
    }
  }

  report() {
    this.port.postMessage({
      receivedSamples: this.receivedSamples,
      renderedFrames: this.renderedFrames,
      underruns: this.underruns,
      droppedMs: this.rate ? (1000 * this.droppedFrames) / this.rate : 0,
      bufferedMs: this.rate ? (1000 * this.bufferedFrames) / this.rate : 0,
      buffering: this.buffering,
      behind: currentTime - this.lastDropTime < BEHIND_HOLD_S,
      rms: Math.sqrt(this.sumSquares / this.measured),
      peak: this.peak,
    });
    this.sumSquares = 0;
    this.peak = 0;
    this.measured = 0;
  }
}

registerProcessor("pcm-player", PcmPlayer);
