"""The Gradio chat page: streamed answers, Stop, Reset, a system prompt and the sampling sliders.

Each browser tab gets its own `TabState` (a gr.State, so its own engine session id and history);
tabs chat at once because the chat events have no Gradio concurrency cap (the engine batches them).
Errors reach the page as a warning and a status line, never as a stack trace.
"""
from __future__ import annotations

import logging
import os
import re

# Before gradio is imported: no usage reports and no version check leave this machine.
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"

import gradio as gr  # noqa: E402

from lmserve.webui.backend import BackendError, ChatBackend, ChatParams  # noqa: E402
from lmserve.webui.chat_turn import TabState, reset, run_turn, snapshot  # noqa: E402

logger = logging.getLogger(__name__)

# System fonts only: the default theme would have the browser fetch web fonts from the internet.
THEME = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                          font_mono=["ui-monospace", "monospace"])


def _markdown_text(text: str) -> str:
    """Plain text shown in a Markdown component as it is (`--session-len`, `interactive_mode`)."""
    return re.sub(r"([\\`*_{}\[\]<>()#+|!~])", r"\\\1", text)


def _warn(message: str) -> str:
    gr.Warning(message)
    return "⚠️ " + _markdown_text(message)


def build_page(backend: ChatBackend, defaults: ChatParams = ChatParams(), max_tokens_limit: int = 4096) -> gr.Blocks:
    """The page for one backend; `max_tokens_limit` is the top of the max-new-tokens slider."""

    def end_quietly(tab: TabState) -> None:      # a closed tab's state expires: free its session
        try:
            backend.end_session(tab.session_id)
        except Exception:
            logger.warning("could not end the session of a closed tab", exc_info=True)

    async def on_send(text, tab, max_new_tokens, temperature, top_p, top_k, system_prompt):
        if not (text or "").strip():
            yield gr.skip(), gr.skip(), gr.skip()
            return
        try:
            params = ChatParams.from_page(max_new_tokens, temperature, top_p, top_k, system_prompt)
            async for view in run_turn(backend, tab, text, params):
                yield view.messages, "", view.status
        except BackendError as e:
            yield snapshot(tab), text, _warn(str(e))
        except Exception as e:          # a bug: the log gets the traceback, the page one line
            logger.exception("a chat turn failed")
            yield snapshot(tab), text, _warn(f"internal error: {type(e).__name__}: {e}")

    def on_stop(tab):
        return "stopping ..." if backend.stop(tab.session_id) else gr.skip()

    def on_reset(tab):
        try:
            reset(backend, tab)
            status = "new conversation"
        except BackendError as e:
            status = _warn(str(e))
        return [], "", status, tab

    with gr.Blocks(title="lmserve chat", analytics_enabled=False) as page:
        tab = gr.State(lambda: TabState(backend.new_session_id()), delete_callback=end_quietly)
        gr.Markdown(f"### lmserve chat · {_markdown_text(backend.description)}")
        chatbot = gr.Chatbot(label="conversation", elem_id="lmserve-chat", height=440,
                             feedback_options=None, buttons=["copy"])
        text = gr.Textbox(show_label=False, placeholder="Type a message, Enter sends", elem_id="lmserve-input",
                          lines=1, max_lines=8, autofocus=True)
        with gr.Row():
            send = gr.Button("Send", variant="primary", elem_id="lmserve-send")
            stop = gr.Button("Stop", variant="stop", elem_id="lmserve-stop")
            new = gr.Button("Reset", elem_id="lmserve-reset")
        status = gr.Markdown("", elem_id="lmserve-status")
        with gr.Accordion("Settings", open=False, elem_id="lmserve-settings"):
            system = gr.Textbox(label="system prompt", value=defaults.system_prompt, lines=2, elem_id="lmserve-system")
            max_new = gr.Slider(1, max(max_tokens_limit, defaults.max_new_tokens), value=defaults.max_new_tokens,
                                step=1, label="max new tokens", elem_id="lmserve-max-new-tokens")
            temperature = gr.Slider(0, 2, value=defaults.temperature, step=0.05, label="temperature (0: greedy)",
                                    elem_id="lmserve-temperature")
            top_p = gr.Slider(0.01, 1, value=defaults.top_p, step=0.01, label="top-p", elem_id="lmserve-top-p")
            top_k = gr.Slider(0, 200, value=defaults.top_k, step=1, label="top-k (0: off)", elem_id="lmserve-top-k")

        inputs = [text, tab, max_new, temperature, top_p, top_k, system]
        outputs = [chatbot, text, status]
        # No concurrency cap: every tab's turn runs at once and the engine batches them.
        turns = [trigger(on_send, inputs, outputs, concurrency_limit=None)
                 for trigger in (text.submit, send.click)]
        stop.click(on_stop, [tab], [status], queue=False)
        new.click(on_reset, [tab], [chatbot, text, status, tab], cancels=turns, queue=False)
        # The chat box's own trash button clears the view: end the session behind it as well.
        chatbot.clear(on_reset, [tab], [chatbot, text, status, tab], cancels=turns, queue=False)
    return page


def launch(page: gr.Blocks, server_name: str = "0.0.0.0", server_port: int = 6006, share: bool = False,
           block: bool = True, on_start=None) -> tuple[str, str | None]:
    """Serve the page; returns its local URL and its public share URL (None without --share).
    With block=True it returns when the page is closed (Ctrl-C), after calling on_start(urls)."""
    _, local_url, share_url = page.queue().launch(
        server_name=server_name, server_port=server_port, share=share, prevent_thread_lock=True,
        theme=THEME, show_error=False, quiet=True, ssr_mode=False, mcp_server=False, pwa=False,
        footer_links=["settings"])
    if on_start is not None:
        on_start(local_url, share_url)
    if block:
        page.block_thread()
    return local_url, share_url
