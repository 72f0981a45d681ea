"""The OpenAI-compatible HTTP server (`lmserve serve api_server`) and its terminal client.

Needs the `serve` extra (fastapi, uvicorn, pydantic, prometheus-client). Talks to the engine only
through `lmserve.api.Pipeline`.
"""
