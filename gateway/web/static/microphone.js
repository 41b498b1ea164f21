// The browser microphone as 16 kHz PCM16 mono frames of 50 ms (see pcm-worklet.js).

export const SAMPLE_RATE_HZ = 16000;

/**
 * Starts capturing; `onFrame(arrayBuffer)` gets each 50 ms frame. Resolves to `{ stop() }` once audio
 * flows; rejects with a readable Error when there is no microphone or the page may not use it.
 */
export async function startMicrophone(onFrame) {
  if (!window.isSecureContext || !navigator.mediaDevices?.getUserMedia) {
    throw new Error("the browser allows the microphone only on https:// pages or on localhost");
  }
  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia({
      // Echo cancellation keeps a loudspeaker out of the microphone; noise suppression stays off: it
      // smears the consonants the recogniser needs (with it on, "discount" came back as "this count")
      // and Whisper copes with background noise by itself.
      audio: { channelCount: 1, echoCancellation: true, noiseSuppression: false, autoGainControl: true },
    });
  } catch (err) {
    const reasons = {
      NotAllowedError: "permission to use the microphone was refused",
      NotFoundError: "no microphone was found",
      NotReadableError: "the microphone is in use by another application",
    };
    throw new Error(reasons[err.name] ?? err.message);
  }
  const context = new AudioContext();
  try {
    if (context.sampleRate < SAMPLE_RATE_HZ) {
      throw new Error(`the audio device runs at ${context.sampleRate} Hz, below the ${SAMPLE_RATE_HZ} Hz needed`);
    }
    await context.audioWorklet.addModule("/static/pcm-worklet.js");
    const source = context.createMediaStreamSource(stream);
    const node = new AudioWorkletNode(context, "pcm16-downsampler", {
      numberOfInputs: 1,
      numberOfOutputs: 1,
      outputChannelCount: [1],
    });
    node.port.onmessage = (message) => onFrame(message.data);
    source.connect(node);
    node.connect(context.destination); // outputs silence; keeps the node in the rendered graph
    await context.resume();
    return {
      stop() {
        node.port.onmessage = null;
        source.disconnect();
        node.disconnect();
        for (const track of stream.getTracks()) track.stop();
        context.close();
      },
    };
  } catch (err) {
    for (const track of stream.getTracks()) track.stop();
    context.close();
    throw err;
  }
}
