"""lmserve: compress, run, serve and measure LLMs of the Llama family."""
from lmserve.config import ChatTemplateConfig, EngineConfig, GenerationConfig

__version__ = "0.1.0"
__all__ = ["pipeline", "Pipeline", "Response", "Session", "EngineConfig", "GenerationConfig",
           "ChatTemplateConfig", "__version__"]


def __getattr__(name):
    # The API pulls in torch and transformers: import it on first use so `lmserve --help` stays fast.
    if name in ("pipeline", "Pipeline", "Response", "Session"):
        from lmserve import api
        return getattr(api, name)
    raise AttributeError(name)
