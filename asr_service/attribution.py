"""A mono recording's transcript given to its speakers: each word to the role who talks when it is said.

Whisper transcribes the one channel once, as it would a mixed recording, with word times; the
diarisation (``speakers.SpeakerTimeline``) says who talks when. Each segment's words go to the role who
talks most over each word's span (``SpeakerTimeline.speaker_of``), and a segment whose words change
speaker is cut there: each run of one speaker's words becomes a segment of its own, on that role's
channel.

Why words on the whole channel, rather than each speaker's turns cut out and transcribed as two
channels: a diarisation mistake then only moves words between roles, it never loses or garbles them
(cutting audio at a wrong boundary clips words, and a missed turn would never be transcribed at all);
Whisper keeps the context of both sides of the call; and the channel is decoded once, not twice. The
cost: in overlapping speech Whisper mostly hears the louder voice, as it does on any mixed recording.
"""

from __future__ import annotations

from collections.abc import MutableMapping, Sequence

import numpy as np
import numpy.typing as npt

from asr_service.audio import TARGET_RATE_HZ
from asr_service.decoding import Word
from asr_service.prosody import analyze
from asr_service.speakers import SpeakerTimeline
from asr_service.streaming import Transcript
from asr_service.transcribe_file import FileSegment, FileTranscript

WordRun = tuple[str, tuple[Word, ...]]
"""A role and the consecutive words it said."""


def word_runs(words: Sequence[Word], speakers: SpeakerTimeline) -> list[WordRun]:
    """``words`` in runs of one role each, in order."""
    runs: list[tuple[str, list[Word]]] = []
    for word in words:
        role = speakers.role_of(word.start_ms / 1000, max(word.end_ms, word.start_ms + 1) / 1000)
        if runs and runs[-1][0] == role:
            runs[-1][1].append(word)
        else:
            runs.append((role, [word]))
    return [(role, tuple(run)) for role, run in runs]


def split_transcript(
    transcript: Transcript,
    speakers: SpeakerTimeline,
    audio: npt.NDArray[np.float32],
    roles: Sequence[str],
    next_ids: MutableMapping[int, int],
) -> list[Transcript]:
    """``transcript`` (a final of the recording's one channel) as one final per run of one speaker's
    words, each on the channel of its role in ``roles``, numbered from ``next_ids`` (per channel,
    advanced here); prosody is measured again on each piece's own audio."""
    runs = word_runs(transcript.words, speakers)
    if not runs:  # no word times: the segment goes whole to whoever talks most in it
        role = speakers.role_of(transcript.start_ms / 1000, transcript.end_ms / 1000)
        runs = [(role, ())]
    pieces = []
    for index, (role, words) in enumerate(runs):
        start_ms = transcript.start_ms if index == 0 else words[0].start_ms
        end_ms = transcript.end_ms if index == len(runs) - 1 else max(words[-1].end_ms, start_ms)
        text = "".join(w.text for w in words).strip() if words else transcript.text
        span = audio[start_ms * TARGET_RATE_HZ // 1000 : end_ms * TARGET_RATE_HZ // 1000]
        spoken_s = (words[-1].end_ms - words[0].start_ms) / 1000 if words else None
        channel = roles.index(role)
        pieces.append(
            Transcript(
                channel=channel,
                segment_id=next_ids.get(channel, 0),
                is_final=True,
                text=text,
                words=words,
                start_ms=start_ms,
                end_ms=end_ms,
                # The decode's own measures: they describe the window Whisper saw, not a piece of it.
                no_speech_prob=transcript.no_speech_prob,
                avg_logprob=transcript.avg_logprob,
                compression_ratio=transcript.compression_ratio,
                prosody=analyze(span, n_words=len(text.split()), speech_span_s=spoken_s),
            )
        )
        next_ids[channel] = next_ids.get(channel, 0) + 1
    return pieces


def split_file_transcript(transcript: FileTranscript, speakers: SpeakerTimeline) -> FileTranscript:
    """A mixed ``callsense transcribe`` result with each segment cut into runs of one speaker's words,
    each on its role; unchanged when the timeline found one voice only."""
    if speakers.roles is None:
        return transcript
    segments: list[FileSegment] = []
    for segment in transcript.segments:
        runs = word_runs(segment.words, speakers)
        if not runs:
            role = speakers.role_of(segment.start_ms / 1000, segment.end_ms / 1000)
            segments.append(FileSegment(segment.start_ms, segment.end_ms, segment.text, role, ()))
            continue
        for index, (role, words) in enumerate(runs):
            start_ms = segment.start_ms if index == 0 else words[0].start_ms
            end_ms = segment.end_ms if index == len(runs) - 1 else max(words[-1].end_ms, start_ms)
            text = "".join(w.text for w in words).strip()
            segments.append(FileSegment(start_ms, end_ms, text, role, words))
    return FileTranscript(" ".join(s.text for s in segments), tuple(segments), transcript.duration_s)
