"""`lmserve bench`: measuring the engine in-process and any OpenAI-compatible server over HTTP.

metrics.py   per-request records -> TTFT/TPOT/ITL/E2E, throughputs, goodput (pure functions)
datasets.py  ShareGPT files and random prompts -> requests with target output lengths
load.py      the load generator: all at once or Poisson arrivals, capped concurrency
inprocess.py one request through Pipeline.generate, timed;  memory.py  peak GPU memory or RSS
generation.py throughput.py serving.py compare_hf.py plot.py   one subcommand each
report.py    tables on screen, JSON and CSV files
"""
