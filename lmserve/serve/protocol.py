"""Request and response bodies of the HTTP server, mirroring OpenAI's (and LMDeploy's for the extras).

Field names, ranges and defaults are OpenAI's so its SDKs work unchanged; the extras (top_k, min_p,
repetition_penalty, ...) are LMDeploy's and vLLM's names. Every range is checked here, so a bad
value is answered with a 400 naming the field before anything reaches the engine.
"""
from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

_MAX_SEED = 2 ** 63 - 1          # what torch.Generator.manual_seed accepts without wrapping around


def _valid_unicode(text: str) -> str:
    # JSON may carry a lone UTF-16 surrogate ("\ud800"); Python keeps it, tokenizers cannot take it.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"the text holds an unpaired UTF-16 surrogate ({text[e.start]!a}), which is not "
                         f"valid Unicode") from None
    return text


Text = Annotated[str, AfterValidator(_valid_unicode)]
Stop = Union[Text, Annotated[list[Text], Field(max_length=16)], None]


class _Request(BaseModel):
    # Unknown fields are ignored, as OpenAI's SDKs send fields newer than any server. Strict: no
    # "yes" for true or "5" for 5; a wrong type is a mistake to report, not to guess at.
    model_config = ConfigDict(extra="ignore", strict=True)


class StreamOptions(_Request):
    include_usage: bool = False


class _Sampling(_Request):
    """What chat and completion requests share."""
    model: str | None = Field(None, description="Served model name; see GET /v1/models. Optional.")
    max_tokens: int | None = Field(None, ge=1, description="Most new tokens; default: up to the session length")
    temperature: float = Field(1.0, ge=0, le=2, description="0 = greedy; > 0 samples")
    top_p: float = Field(1.0, gt=0, le=1)
    n: int = Field(1, ge=1, le=16)
    stop: Stop = None
    seed: int | None = Field(None, ge=0, le=_MAX_SEED)
    presence_penalty: float = Field(0.0, ge=-2, le=2)
    frequency_penalty: float = Field(0.0, ge=-2, le=2)
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    # extras (LMDeploy / vLLM)
    top_k: int = Field(0, ge=0, description="0 = off")
    min_p: float = Field(0.0, ge=0, le=1)
    repetition_penalty: float = Field(1.0, gt=0, le=10)
    ignore_eos: bool = False
    skip_special_tokens: bool = True
    min_new_tokens: int | None = Field(None, ge=0)
    min_tokens: int | None = Field(None, ge=0, description="vLLM's name for min_new_tokens")
    session_id: int | None = Field(None, ge=0, le=2 ** 62,
                                   description="Keep this conversation's K/V between calls (LMDeploy)")


class TextPart(_Request):
    type: Literal["text"]
    text: Text


class ChatMessage(_Request):
    role: Literal["system", "developer", "user", "assistant"]
    content: Union[Text, list[TextPart]]
    name: str | None = None


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(..., min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1, description="OpenAI's newer name for max_tokens")
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)


class CompletionRequest(_Sampling):
    prompt: Union[Text, Annotated[list[Text], Field(min_length=1, max_length=64)],
                  Annotated[list[int], Field(min_length=1)],
                  Annotated[list[Annotated[list[int], Field(min_length=1)]], Field(min_length=1, max_length=64)]]
    logprobs: int | None = Field(None, ge=0, le=20)
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = Field(None, ge=1, le=16)


class TokenizeRequest(_Request):
    model: str | None = None
    prompt: Text | None = None
    messages: list[ChatMessage] | None = Field(None, min_length=1)
    add_special_tokens: bool = True


class InteractiveRequest(_Request):
    """LMDeploy's /v1/chat/interactive: the server keeps the history, the client sends the new turn."""
    prompt: Union[Text, list[ChatMessage]] = ""
    session_id: int = Field(-1, ge=-1, le=2 ** 62, description="-1: the server picks one and returns it")
    interactive_mode: bool = Field(False, description="keep the session after this turn; false ends it")
    stream: bool = False
    stop: Stop = None
    request_output_len: int | None = Field(None, ge=1, description="most new tokens")
    top_p: float = Field(0.8, gt=0, le=1)
    top_k: int = Field(40, ge=0)
    min_p: float = Field(0.0, ge=0, le=1)
    temperature: float = Field(0.8, ge=0, le=2)
    repetition_penalty: float = Field(1.0, gt=0, le=10)
    ignore_eos: bool = False
    skip_special_tokens: bool = True
    cancel: bool = Field(False, description="abort the session's running turn")
    seed: int | None = Field(None, ge=0, le=_MAX_SEED)
    min_new_tokens: int | None = Field(None, ge=0)


# ---- responses (for the OpenAPI schema; the handlers build plain dicts of the same shape) -----------
class ErrorInfo(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorInfo


# For the OpenAPI schema: the statuses an endpoint may answer besides 200, all in this shape.
ERROR_RESPONSES = {code: {"model": ErrorResponse} for code in (400, 401, 404, 429, 500, 503)}


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: dict[str, int] | None = None


class ChatChoice(BaseModel):
    index: int
    message: dict[str, Any]
    logprobs: dict[str, Any] | None = None
    finish_reason: str | None = None


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    system_fingerprint: str | None = None


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: dict[str, Any] | None = None
    finish_reason: str | None = None


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage
    system_fingerprint: str | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "lmserve"
    max_model_len: int | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class TokenizeResponse(BaseModel):
    tokens: list[int]
    count: int
    max_model_len: int


class InteractiveResponse(BaseModel):
    text: str
    tokens: int
    input_tokens: int
    history_tokens: int
    finish_reason: str | None = None
    session_id: int
