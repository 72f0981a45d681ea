"""Incremental detokenization and stop strings.

Text is emitted only when it is stable: decoding a few tokens of context plus the new ones must not
end in U+FFFD (a UTF-8 character still split across tokens, as happens with CJK and emoji), and
while stop strings are set, the tail that could still be the start of one is held back.
"""
from __future__ import annotations

_CONTEXT = 6   # prompt tokens decoded with the first output tokens, so leading spaces come out right


class IncrementalDetokenizer:
    def __init__(self, tokenizer, prompt_ids: list[int], skip_special_tokens: bool = True,
                 stop_words: list[str] | None = None, include_stop: bool = False):
        self.tokenizer = tokenizer
        self.skip_special = skip_special_tokens
        self.ids = list(prompt_ids[-_CONTEXT:])
        self.prefix_offset = 0
        self.read_offset = len(self.ids)
        self.text = ""                 # all stable text so far (after stop-string truncation)
        self.emitted = 0               # how much of `text` was handed out
        self.stop_words = stop_words or []
        self.include_stop = include_stop
        self.hold = max((len(s) for s in self.stop_words), default=1) - 1

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip_special)

    def add(self, token_id: int, final: bool = False) -> bool:
        """Add a generated token; True if a stop string ended the text."""
        self.ids.append(token_id)
        prefix = self._decode(self.ids[self.prefix_offset:self.read_offset])
        full = self._decode(self.ids[self.prefix_offset:])
        if len(full) > len(prefix) and (final or not full.endswith("\ufffd")):
            start = len(self.text)
            self.text += full[len(prefix):]
            self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
            return self._check_stop(start)
        return False

    def _check_stop(self, new_from: int) -> bool:
        for stop in self.stop_words:
            pos = self.text.find(stop, max(0, new_from - len(stop) + 1))
            if pos >= 0:
                self.text = self.text[:pos + len(stop)] if self.include_stop else self.text[:pos]
                return True
        return False

    def take_delta(self, finished: bool) -> str:
        """Text not yet handed out; while unfinished, keep back what could begin a stop string."""
        end = len(self.text) if finished or not self.stop_words else max(self.emitted, len(self.text) - self.hold)
        delta = self.text[self.emitted:end]
        self.emitted = end
        return delta
