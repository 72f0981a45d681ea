"""`lmserve serve gradio`: a chat page in the browser (Gradio).

backend.py         what the page needs from a model: stream a turn, stop it, end a session
local_backend.py   that, on an engine in this process (lmserve.api.Pipeline)
http_backend.py    that, as a client of a running `lmserve serve api_server`
chat_turn.py       one turn of a tab's conversation, independent of Gradio (tested without a browser)
page.py            the Gradio Blocks page and its launch
"""
