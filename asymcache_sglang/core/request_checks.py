"""Checks of a request's prompt before it reaches the scheduler, where a bad one kills it.

A token id outside the vocabulary fails in the scheduler's embedding lookup and takes every
request in flight with it; text with a lone surrogate fails in the tokenizer with a TypeError
that SGLang answers with a bare 500. Both are the client's error: the messages say what to fix.
"""

from __future__ import annotations

import operator
from array import array
from collections.abc import Sequence

import numpy as np


def token_ids_error(input_ids: Sequence[object], vocab_size: int) -> str | None:
    """Why ``input_ids`` cannot be served by a model of ``vocab_size`` tokens, or None."""
    try:
        # C speed for the usual case: all ints, checked by their smallest and largest (numpy's
        # min and max: the builtins would box every element, 3x the conversion itself).
        ids = np.frombuffer(array("q", input_ids), dtype=np.int64)
        if not len(ids) or (ids.min() >= 0 and ids.max() < vocab_size):
            return None
    except TypeError:
        index, bad = next((i, t) for i, t in enumerate(input_ids) if not _is_integer(t))
        return f"input_ids must be integers; input_ids[{index}] is {bad!r}"
    except OverflowError:  # beyond 64 bits: out of range too
        pass
    index, bad = next(
        (i, t) for i, t in enumerate(input_ids) if not 0 <= operator.index(t) < vocab_size
    )
    return (
        f"input_ids[{index}] is {bad}, outside this model's vocabulary: "
        f"valid token ids are 0 to {vocab_size - 1}"
    )


def _is_integer(value: object) -> bool:
    try:
        operator.index(value)
    except TypeError:
        return False
    return True


def text_error(text: object) -> str | None:
    """Why ``text`` (a string, or lists and dicts of them: a batch, string pairs, chat messages)
    cannot be tokenized: it must encode to UTF-8, which a lone surrogate (``"\\ud800"`` in JSON)
    does not."""
    if isinstance(text, str):
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            return (
                f"text is not valid Unicode: character {exc.start} is a lone surrogate "
                f"(U+{ord(text[exc.start]):04X}); send UTF-8 text"
            )
        return None
    if isinstance(text, dict):
        text = list(text.values())
    if not isinstance(text, (list, tuple)):
        return None
    return next((error for item in text if (error := text_error(item)) is not None), None)
