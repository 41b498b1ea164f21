"""The sentiment model's reading of each segment, as features for the objection tagger.

The MiniLM sentence embedding says what a segment is about (price, dates, a boss); it was trained for
similarity, not for a buyer's stance, so "that's well over what we budgeted" and "that's within what we
budgeted" lie close together. The shipped sentiment model was fine-tuned on sales calls to hear exactly
that difference, reading each line with the one before it. Here each segment is read after the segment
before it in the call (start-time order: the order the tagger sees, and the corpus's), whichever side
spoke it. Its pooled state (the 384 numbers its classifier reads, after the pooler's tanh) is the
tagger's stance features: cross-validated on the sales corpus, micro-F1 0.483 -> 0.547 at the same
false-tag rate (docs/objections.md).

The tagger's weights are fitted to one sentiment model's pooled space, so they pin that model: the weights
file records the SHA-256 of the ONNX file it was fitted with, and the tagger refuses to start against
another (``StanceModelMismatchError``). The tokenizer and the model's card ship with the ONNX file and
never change without it (``callsense export`` writes all three), so the file's checksum pins them too.
The tagger reads the *shipped* model file, never a tenant's retrained one, so a promotion in the model
registry never moves its features. Shipping a new sentiment model means refitting the tagger
(``callsense objections train``); a test fails until that is done.

The graph's pooled tensor is made a second output at load time (the ``onnx`` package edits the graph in
memory; the file on disk stays the scorer's). One ONNX Runtime session, one thread, loaded on first use.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray

from callsense.int8_weights import load_for_this_cpu
from callsense.model_files import file_sha256
from callsense.tokenization import SHIPPED_MODEL_DIR, EncodedText, SentimentTokenizer, TextRejected, pad_batch
from postcall.objection_model import ObjectionModelError

if TYPE_CHECKING:
    import onnx

STANCE_MODEL_PATH = SHIPPED_MODEL_DIR / "model.int8.onnx"
# Only the end of the previous segment fits in the 128-token pair anyway (as the scorer cuts it).
MAX_PREVIOUS_CHARS = 2048

Matrix = NDArray[np.float32]


class StanceModelMismatchError(ObjectionModelError):
    """The objection weights were fitted on another sentiment model than the one installed (a ValueError,
    as a broken weights file is: the post-call worker exits 2 with this message)."""


def check_stance_model(expected_sha256: str, path: Path = STANCE_MODEL_PATH) -> None:
    """Raise ``StanceModelMismatchError`` unless ``path`` is the file the weights were fitted on."""
    if not path.is_file():
        raise StanceModelMismatchError(
            f"the objection tagger reads the sentiment model {path}, which is missing: restore the "
            "shipped scorer_service/model/"
        )
    found = file_sha256(path)
    if found != expected_sha256:
        raise StanceModelMismatchError(
            f"the objection tagger's weights were fitted on the sentiment model with SHA-256 "
            f"{expected_sha256[:12]}..., but {path} is {found[:12]}...: refit the tagger on the shipped "
            "model with `callsense objections train`"
        )


def _pooled_output_name(graph: onnx.GraphProto) -> str:
    """The pooler's tanh output: what the classifier reads (torch's BERT export names it so)."""
    names = [node.output[0] for node in graph.node if node.op_type == "Tanh" and "pooler" in node.name]
    if len(names) != 1:
        raise StanceModelMismatchError(
            f"expected one pooler Tanh node in the sentiment model's graph, found {len(names)}"
        )
    return str(names[0])


class StanceEncoder:
    """Segments of a call in, one pooled vector per segment out, each read after the segment before it
    when the model was trained with context. Thread-safe (ONNX Runtime sessions are)."""

    def __init__(self, model_path: Path = STANCE_MODEL_PATH, threads: int = 1) -> None:
        import onnx
        import onnxruntime as ort

        self.model_path = model_path
        # Signed INT8 weights on a VNNI CPU: the same features, bit for bit, sooner (callsense.int8_weights).
        signed, _ = load_for_this_cpu(model_path)
        graph_model = signed if signed is not None else onnx.load(str(model_path))
        self.output = _pooled_output_name(graph_model.graph)
        graph_model.graph.output.append(
            onnx.helper.make_tensor_value_info(self.output, onnx.TensorProto.FLOAT, None)
        )
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self._session = ort.InferenceSession(
            graph_model.SerializeToString(), options, providers=["CPUExecutionProvider"]
        )
        card_path = model_path.parent / "model_card.json"
        card = json.loads(card_path.read_text()) if card_path.is_file() else {}
        self.uses_context = bool(card.get("uses_context", False))
        self._tokenizer = SentimentTokenizer(model_path.parent / "tokenizer.json")
        # The width, from one real pass (the graph declares the added output without a shape).
        (probe,) = self._session.run([self.output], pad_batch([self._tokenizer.encode("ok")]))
        self.dimension = int(probe.shape[-1])

    def encode_call(self, texts: Sequence[str], rows: Sequence[int] | None = None) -> Matrix:
        """One row per segment of a call given in call order, each read after the segment before it;
        only the ``rows`` asked for are computed (the customer's: the rep's rows are never read), the
        others stay zeros."""
        wanted = range(len(texts)) if rows is None else rows
        return self._run(
            len(texts),
            {i: self._encode(texts[i], texts[i - 1][-MAX_PREVIOUS_CHARS:] if i else "") for i in wanted},
        )

    def encode_alone(self, texts: Sequence[str]) -> Matrix:
        """One row per text, each read without context (a hand-written example sentence)."""
        return self._run(len(texts), {i: self._encode(text, "") for i, text in enumerate(texts)})

    def _encode(self, text: str, previous: str) -> EncodedText | None:
        """None for a segment the model refuses (blank, or over its 128 tokens): its row stays zeros, the
        stance of "nothing heard", and the call's other segments are still read."""
        try:
            return self._tokenizer.encode(text, previous if self.uses_context else "")
        except TextRejected:
            return None

    def _run(self, count: int, encoded: dict[int, EncodedText | None]) -> Matrix:
        rows = np.zeros((count, self.dimension), dtype=np.float32)
        # One pass per segment, as the scorer runs: the INT8 graph quantises its activations with one
        # scale per tensor, so a padded batch would give a segment features that depend on its batch. No
        # lock: ONNX Runtime runs one session from several threads at once (the post-call worker's
        # --report-workers build that many reports in parallel).
        for index, item in encoded.items():
            if item is not None:
                (pooled,) = self._session.run([self.output], pad_batch([item]))
                rows[index] = pooled[0]
        return rows


_shared: StanceEncoder | None = None
_shared_lock = threading.Lock()


def shared_stance_encoder() -> StanceEncoder:
    """The process's stance encoder on the shipped model, loaded on first use (once)."""
    global _shared
    if _shared is None:
        with _shared_lock:
            if _shared is None:
                _shared = StanceEncoder()
    return _shared
