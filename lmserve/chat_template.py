"""Chat templates: built-in ones by name (as in LMDeploy), or the model's own jinja template.

Built-ins are jinja templates rendered by the tokenizer's `apply_chat_template`, so both kinds go
through the same, well-tested renderer. Each built-in also names the strings that end a turn, which
become stop words (a model that writes its turn-end as text must still stop).
"""
from __future__ import annotations

from dataclasses import dataclass

from lmserve.config import ChatTemplateConfig


@dataclass(frozen=True, slots=True)
class BuiltinTemplate:
    jinja: str
    default_system: str | None = None
    stop_words: tuple[str, ...] = ()


def _turns(system: str, user: str, assistant: str, end_user: str, end_assistant: str,
           gen_prompt: str, system_end: str = "") -> str:
    return (
        "{% for m in messages %}"
        "{% if m['role'] == 'system' %}" + system + "{{ m['content'] }}" + system_end +
        "{% elif m['role'] == 'user' %}" + user + "{{ m['content'] }}" + end_user +
        "{% else %}" + assistant + "{{ m['content'] }}" + end_assistant + "{% endif %}"
        "{% endfor %}{% if add_generation_prompt %}" + gen_prompt + "{% endif %}")


_CHATML = _turns("<|im_start|>system\n", "<|im_start|>user\n", "<|im_start|>assistant\n",
                 "<|im_end|>\n", "<|im_end|>\n", "<|im_start|>assistant\n", "<|im_end|>\n")

BUILTIN_TEMPLATES: dict[str, BuiltinTemplate] = {
    "internlm-chat": BuiltinTemplate(
        _turns("<|System|>:", "<|User|>:", "<|Bot|>:", "\n", "<eoa>\n", "<|Bot|>:", "\n"),
        "You are an AI assistant whose name is InternLM (书生·浦语).", ("<eoa>",)),
    "internlm2": BuiltinTemplate(
        _CHATML, "You are an AI assistant whose name is InternLM (书生·浦语).", ("<|im_end|>",)),
    "llama2": BuiltinTemplate(
        "{% set sys = namespace(text='') %}"
        "{% for m in messages %}{% if m['role'] == 'system' %}"
        "{% set sys.text = '<<SYS>>\\n' + m['content'] + '\\n<</SYS>>\\n\\n' %}"
        "{% elif m['role'] == 'user' %}[INST] {{ sys.text }}{{ m['content'] }} [/INST]"
        "{% set sys.text = '' %}"
        "{% else %} {{ m['content'] }} </s><s>{% endif %}{% endfor %}",
        None, ()),
    "llama3": BuiltinTemplate(
        "<|begin_of_text|>" + _turns(
            "<|start_header_id|>system<|end_header_id|>\n\n", "<|start_header_id|>user<|end_header_id|>\n\n",
            "<|start_header_id|>assistant<|end_header_id|>\n\n", "<|eot_id|>", "<|eot_id|>",
            "<|start_header_id|>assistant<|end_header_id|>\n\n", "<|eot_id|>"),
        None, ("<|eot_id|>",)),
    "chatml": BuiltinTemplate(_CHATML, None, ("<|im_end|>",)),
    "qwen": BuiltinTemplate(_CHATML, "You are a helpful assistant.", ("<|im_end|>",)),
    "baichuan2": BuiltinTemplate(
        _turns("", "<reserved_106>", "<reserved_107>", "", "", "<reserved_107>"), None, ()),
    "vicuna": BuiltinTemplate(
        _turns("", "USER: ", "ASSISTANT: ", " ", "</s>", "ASSISTANT:", " "),
        "A chat between a curious user and an artificial intelligence assistant. The assistant gives "
        "helpful, detailed, and polite answers to the user's questions.", ()),
    "base": BuiltinTemplate("{% for m in messages %}{{ m['content'] }}{% endfor %}", None, ()),
}


class ChatTemplate:
    """Turns OpenAI-style message lists into prompt text for one model."""

    def __init__(self, tokenizer, config: ChatTemplateConfig | None, model_template: str | None):
        config = config or ChatTemplateConfig()
        self.tokenizer = tokenizer
        self.meta_instruction = config.meta_instruction
        self.stop_words: tuple[str, ...] = ()
        if config.model_name is not None:
            name = config.model_name.lower()
            if name not in BUILTIN_TEMPLATES:
                raise ValueError(f"unknown chat template {config.model_name!r}; built-in: "
                                 f"{', '.join(sorted(BUILTIN_TEMPLATES))} (see `lmserve list`)")
            builtin = BUILTIN_TEMPLATES[name]
            self.jinja, self.stop_words = builtin.jinja, builtin.stop_words
            self.meta_instruction = self.meta_instruction or builtin.default_system
            self.name = name
        elif model_template:
            self.jinja, self.name = model_template, "model"
        else:   # a base model without a template: plain concatenation
            self.jinja, self.name = BUILTIN_TEMPLATES["base"].jinja, "base"

    def messages(self, prompt: str | list[dict]) -> list[dict]:
        msgs = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
        if not msgs:
            raise ValueError("messages must not be empty")
        for m in msgs:
            if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant") \
                    or not isinstance(m.get("content"), str):
                raise ValueError(f"each message needs a role (system, user or assistant) and a string "
                                 f"content, got {m!r}")
        if self.meta_instruction and msgs[0]["role"] != "system":
            msgs.insert(0, {"role": "system", "content": self.meta_instruction})
        return msgs

    def render(self, prompt: str | list[dict], add_generation_prompt: bool = True) -> str:
        return self.tokenizer.apply_chat_template(self.messages(prompt), chat_template=self.jinja,
                                                  tokenize=False, add_generation_prompt=add_generation_prompt)
