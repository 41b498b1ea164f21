"""The sentiment model's tokenizer, without torch or transformers: `tokenizers` reading a tokenizer.json.

Every caller that needs to know how long a text is for the model (the chopper, the scorer, the
`score` command) counts with this one, so "under 128 tokens" means the same everywhere. It lives in the
runtime because the chopper and the scorer both need it and neither may import the other.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

MAX_TOKENS = 128


def _shipped_model_dir() -> Path:
    # The shipped model is package data of scorer_service (its files, not its code): find the folder
    # without importing that service, so the runtime stays below every service.
    spec = importlib.util.find_spec("scorer_service")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("scorer_service is not installed: its model folder holds the shipped tokenizer")
    return Path(next(iter(spec.submodule_search_locations))).resolve() / "model"


SHIPPED_MODEL_DIR = _shipped_model_dir()
"""The shipped model's folder (model.int8.onnx, tokenizer.json, its card)."""


class TextRejected(ValueError):
    """A text the model cannot score as it is; the message says what to change."""


@dataclass(frozen=True)
class EncodedText:
    """Token ids of one input (with [CLS] and [SEP]), ready to be padded into a batch."""

    input_ids: np.ndarray  # int64, shape (n,)
    token_type_ids: np.ndarray  # int64, shape (n,)

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])


def mark_role(text: str, role: str) -> str:
    """The text as a model trained with speaker roles reads it: "customer: ..." or "agent: ..." (a role
    that is not known, "", leaves it as it is: general text, as the model also learnt it). Blank text stays
    blank, so that it is still refused as empty."""
    return f"{role}: {text}" if role and text.strip() else text


class SentimentTokenizer:
    """Encodes utterances (optionally after the previous one, as a sentence pair)."""

    def __init__(self, path: Path | None = None, max_tokens: int = MAX_TOKENS) -> None:
        self.path = path or SHIPPED_MODEL_DIR / "tokenizer.json"
        self._tokenizer = Tokenizer.from_file(str(self.path))
        # The saved file pads every input to 128 tokens; at batch 1 that is most of the cost.
        self._tokenizer.no_padding()
        self._tokenizer.no_truncation()
        self.max_tokens = max_tokens

    def count(self, text: str) -> int:
        """Tokens of `text` alone, [CLS] and [SEP] included."""
        return len(self._tokenizer.encode(text).ids)

    def encode(self, text: str, previous_text: str = "") -> EncodedText:
        """Encode one utterance; raises TextRejected for empty or over-long text.

        The previous utterance, if given, is cut from its start so the utterance itself always fits.
        """
        if not text or not text.strip():
            raise TextRejected("empty text: send the words of the utterance")
        own = self._tokenizer.encode(text)
        if len(own.ids) > self.max_tokens:
            raise TextRejected(
                f"text is {len(own.ids)} tokens; the model takes at most {self.max_tokens}: "
                "split it into utterances (the chopper service does this)"
            )
        if previous_text.strip():
            budget = self.max_tokens - len(own.ids) - 1
            previous = self._tokenizer.encode(previous_text, add_special_tokens=False).ids
            if budget > 0 and previous:
                pair = self._tokenizer.encode(previous_text, text)
                ids, types = pair.ids, pair.type_ids
                overflow = len(ids) - self.max_tokens
                if overflow > 0:  # drop the oldest words of the context, keep [CLS]
                    ids = ids[:1] + ids[1 + overflow :]
                    types = types[:1] + types[1 + overflow :]
                return EncodedText(np.asarray(ids, dtype=np.int64), np.asarray(types, dtype=np.int64))
        return EncodedText(np.asarray(own.ids, dtype=np.int64), np.asarray(own.type_ids, dtype=np.int64))


def pad_batch(items: list[EncodedText]) -> dict[str, np.ndarray]:
    """Stack encodings into the model's three inputs, padded to the longest item."""
    width = max(len(item) for item in items)
    ids = np.zeros((len(items), width), dtype=np.int64)
    types = np.zeros((len(items), width), dtype=np.int64)
    mask = np.zeros((len(items), width), dtype=np.int64)
    for row, item in enumerate(items):
        n = len(item)
        ids[row, :n] = item.input_ids
        types[row, :n] = item.token_type_ids
        mask[row, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
