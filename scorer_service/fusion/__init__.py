"""Tone fusion: the text model's probabilities moved by how the words were said (issue 15).

- ``features``: a segment's prosody as numbers, and one speaker's running baseline of them within a call
  (absolute pitch says who is talking, not how they feel: only deviations from the speaker's own voice
  count);
- ``head``: the fusion weights (a logistic regression or tiny MLP, NumPy only) read from ``fusion.json``;
- ``calls``: the per-call baselines a scorer keeps, bounded and evicted;
- ``tone``: what the scorer calls: observe an utterance's prosody, fuse its text probabilities.

``fusion.json`` beside this file is the shipped head (its own version; ``callsense train-fusion``
regenerates it, ``FUSION_CARD.md`` says how it was made and what it scores).
"""
