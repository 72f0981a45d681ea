"""From a request body to token ids and a GenerationConfig, checking everything the engine would.

The engine checks prompt lengths too, but for a stream its error would come after the status line,
and a bad token id would fail the whole engine step for every request in it. So the server checks
first and answers 400 with the limit and the flag that sets it.
"""
from __future__ import annotations

import jinja2

from lmserve.config import GenerationConfig
from lmserve.serve.errors import bad_request
from lmserve.serve.generation import Job
from lmserve.serve.stats import EngineLimits


def template_messages(messages) -> list[dict]:
    """OpenAI messages (content as a string or text parts) -> the chat template's {role, content}."""
    out = []
    for m in messages:
        content = m.content if isinstance(m.content, str) else "\n".join(p.text for p in m.content)
        # "developer" is OpenAI's newer name for the system role.
        out.append({"role": "system" if m.role == "developer" else m.role, "content": content})
    return out


def encode_messages(pipeline, messages: list[dict]) -> list[int]:
    try:
        return pipeline.encode(messages, do_preprocess=True)
    except (ValueError, jinja2.TemplateError) as e:   # a role order the template refuses, say
        raise bad_request(f"messages: {e}", param="messages") from e
    except TypeError as e:       # the tokenizer refusing text the request checks let through
        raise bad_request(f"messages: the tokenizer cannot encode this text ({e})", param="messages") from e


def encode_text(pipeline, text: str, param: str = "prompt") -> list[int]:
    try:
        return pipeline.encode(text, do_preprocess=False)
    except TypeError as e:
        raise bad_request(f"{param}: the tokenizer cannot encode this text ({e})", param=param) from e


def check_prompt(ids: list[int], limits: EngineLimits, max_tokens: int | None,
                 max_tokens_param: str = "max_tokens", param: str = "messages") -> int:
    """Raise a 400 for a prompt the engine cannot serve; return the max_new_tokens to use."""
    n = len(ids)
    if n == 0:
        raise bad_request("the prompt is empty (it encodes to no tokens)", param=param)
    bad = next((t for t in ids if not 0 <= t < limits.vocab_size), None)
    if bad is not None:
        raise bad_request(f"token id {bad} is outside the vocabulary [0, {limits.vocab_size})", param=param)
    if n >= limits.session_len:
        raise bad_request(f"the prompt has {n} tokens, but the session length (--session-len) is "
                          f"{limits.session_len}; it must leave room for at least one new token",
                          param=param, code="context_length_exceeded")
    if n + 1 > limits.cache_tokens:
        raise bad_request(f"the prompt has {n} tokens, but the whole KV cache holds only {limits.cache_tokens} "
                          f"tokens (raise --cache-max-entry-count or --num-blocks)",
                          param=param, code="context_length_exceeded")
    room = limits.session_len - n
    if max_tokens is not None and max_tokens > room:
        raise bad_request(f"{max_tokens_param}={max_tokens} is too large: the prompt has {n} tokens and the "
                          f"session length (--session-len) is {limits.session_len}, so at most {room} new "
                          f"tokens fit", param=max_tokens_param, code="context_length_exceeded")
    return max_tokens if max_tokens is not None else room


def stop_words(stop) -> list[str] | None:
    if stop is None:
        return None
    words = [stop] if isinstance(stop, str) else list(stop)
    if any(not w for w in words):
        raise bad_request("stop: stop strings must not be empty", param="stop")
    return words or None


def generation_config(body, max_new_tokens: int, logprobs: int | None, min_new_tokens: int | None = None
                      ) -> GenerationConfig:
    """OpenAI semantics: temperature 0 is greedy, anything above samples."""
    try:
        return GenerationConfig(
            max_new_tokens=max_new_tokens, do_sample=body.temperature > 0,
            temperature=body.temperature, top_p=body.top_p, top_k=body.top_k, min_p=body.min_p,
            repetition_penalty=body.repetition_penalty,
            presence_penalty=getattr(body, "presence_penalty", 0.0),
            frequency_penalty=getattr(body, "frequency_penalty", 0.0),
            ignore_eos=body.ignore_eos, random_seed=body.seed, stop_words=stop_words(body.stop),
            min_new_tokens=min_new_tokens, skip_special_tokens=body.skip_special_tokens, logprobs=logprobs)
    except ValueError as e:        # GenerationConfig names the field first
        message = str(e)
        if message.startswith("min_new_tokens"):
            message += f" (max_tokens is {max_new_tokens})"
        raise bad_request(message, param=message.split()[0]) from e


def fan_out(prompts: list[list[int]], gen: GenerationConfig, n: int, session_id: int | None = None) -> list[Job]:
    """n jobs per prompt, indexed prompt-major as OpenAI does; a seed is offset per copy so the
    copies differ yet each stays reproducible."""
    jobs = []
    for p, ids in enumerate(prompts):
        for k in range(n):
            g = gen if k == 0 or gen.random_seed is None else gen.with_seed((gen.random_seed + k) % 2 ** 63)
            jobs.append(Job(p * n + k, ids, g, session_id, counts_prompt=(k == 0)))
    return jobs
