"""The local backend with a record of what the page made it do, and the engine's live sessions."""
from __future__ import annotations

from lmserve.webui.local_backend import LocalBackend


class RecordingBackend(LocalBackend):
    """The local backend, noting which session and settings each turn used, which session each
    reset ended, and how many turns
    ran at once at most: what the page did is then checked on the engine's side too."""

    def __init__(self, pipeline):
        super().__init__(pipeline)
        self.turn_sessions: list[int] = []
        self.turn_params: list = []
        self.ended_sessions: list[int] = []
        self.running_now = self.most_at_once = 0

    async def stream(self, session_id, messages, params):
        self.turn_sessions.append(session_id)
        self.turn_params.append(params)
        self.running_now += 1
        self.most_at_once = max(self.most_at_once, self.running_now)
        try:
            async for event in super().stream(session_id, messages, params):
                yield event
        finally:
            self.running_now -= 1

    def end_session(self, session_id):
        self.ended_sessions.append(session_id)
        super().end_session(session_id)


def engine_sessions(pipeline) -> set[int]:
    return set(pipeline.loop.call(lambda engine: list(engine.scheduler.sessions)))
