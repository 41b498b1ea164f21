// AudioWorklet processor: the microphone's samples (at the AudioContext's rate, usually 48 kHz) to
// 16 kHz mono PCM16, posted to the page in frames of 50 ms (800 samples, 1600 bytes).
//
// Downsampling: a windowed-sinc low-pass at 7.2 kHz (below the 8 kHz Nyquist of the output, so nothing
// above folds back into the speech band), then the output samples are read off the filtered signal by
// linear interpolation (the ratio need not be whole: 44.1 kHz devices exist).

const TARGET_RATE = 16000;
const FRAME_SAMPLES = 800; // 50 ms at 16 kHz
const CUTOFF_HZ = 7200;

function lowPass(inputRate) {
  const ratio = inputRate / TARGET_RATE;
  const taps = 2 * Math.ceil(8 * ratio) + 1; // about 16 output samples of support: a steep enough edge
  const fc = CUTOFF_HZ / inputRate;
  const middle = (taps - 1) / 2;
  const kernel = new Float32Array(taps);
  let sum = 0;
  for (let i = 0; i < taps; i++) {
    const n = i - middle;
    const sinc = n === 0 ? 2 * fc : Math.sin(2 * Math.PI * fc * n) / (Math.PI * n);
    const blackman = 0.42 - 0.5 * Math.cos((2 * Math.PI * i) / (taps - 1)) + 0.08 * Math.cos((4 * Math.PI * i) / (taps - 1));
    kernel[i] = sinc * blackman;
    sum += kernel[i];
  }
  for (let i = 0; i < taps; i++) kernel[i] /= sum; // unit gain at 0 Hz
  return kernel;
}

class Pcm16Downsampler extends AudioWorkletProcessor {
  constructor() {
    super();
    this.step = sampleRate / TARGET_RATE; // input samples per output sample (3 at 48 kHz)
    this.kernel = lowPass(sampleRate);
    this.history = new Float32Array(this.kernel.length); // the last input samples, a ring
    this.head = 0;
    this.previous = 0; // the filtered sample before the current one
    this.position = 0; // where the next output sample lies, in input samples after `previous`
    this.frame = new Int16Array(FRAME_SAMPLES);
    this.filled = 0;
  }

  filter(sample) {
    const { history, kernel } = this;
    history[this.head] = sample;
    this.head = (this.head + 1) % history.length;
    let acc = 0;
    for (let i = 0, j = this.head; i < kernel.length; i++, j = j + 1 === history.length ? 0 : j + 1) {
      acc += kernel[i] * history[j];
    }
    return acc;
  }

  process(inputs) {
    const channels = inputs[0];
    if (!channels || channels.length === 0) return true;
    const length = channels[0].length;
    for (let i = 0; i < length; i++) {
      let sample = 0;
      for (const channel of channels) sample += channel[i];
      const current = this.filter(sample / channels.length); // a stereo microphone is mixed down to mono
      // Output samples falling between `previous` (at 0) and `current` (at 1).
      while (this.position <= 1) {
        this.push(this.previous + (current - this.previous) * this.position);
        this.position += this.step;
      }
      this.position -= 1;
      this.previous = current;
    }
    return true;
  }

  push(value) {
    const clamped = Math.max(-1, Math.min(1, value));
    this.frame[this.filled++] = Math.round(clamped < 0 ? clamped * 32768 : clamped * 32767);
    if (this.filled === FRAME_SAMPLES) {
      // Little-endian on every platform browsers run on, as the gateway's pcm16 expects.
      this.port.postMessage(this.frame.buffer, [this.frame.buffer]);
      this.frame = new Int16Array(FRAME_SAMPLES);
      this.filled = 0;
    }
  }
}

registerProcessor("pcm16-downsampler", Pcm16Downsampler);
