"""A tensor-parallel worker: rank > 0. Joins the group, loads its shard, then runs every step rank 0
sends until told to stop.

Local workers are spawned by rank 0 (`workers.py`); on the other nodes `lmserve serve worker`
starts them (`run_node`). A worker gets the model and engine config from rank 0, so the command
on the other nodes needs only the rendezvous flags.
"""
from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time

import torch

from lmserve.engine.tp.channel import ControlChannel
from lmserve.engine.tp.errors import TPFailedError, TPSetupError
from lmserve.engine.tp.rendezvous import Topology, join, leave

logger = logging.getLogger(__name__)


def _exit_with_parent(parent_pid: int) -> None:
    """A spawned worker must not outlive rank 0, even when rank 0 is killed outright."""
    def watch():
        while os.getppid() == parent_pid:
            time.sleep(1.0)
        os._exit(1)
    threading.Thread(target=watch, name="lmserve-parent-watch", daemon=True).start()


def serve_rank(rank: int, topo: Topology, threads: int) -> None:
    """Join, load this rank's shard, run steps until rank 0 says stop; raises on failure."""
    from lmserve.engine.model_runner import ModelRunner
    from lmserve.model.loader import load_model
    from lmserve.nn.parallel import ParallelContext
    if threads:
        torch.set_num_threads(threads)
    channel = ControlChannel(rank, join(rank, topo))
    try:
        spec = channel.share_spec(None)
        try:
            loaded = load_model(**spec.load_args)
            runner = ModelRunner(spec.model_cfg, loaded.weights(), spec.cfg, spec.session_len,
                                 ParallelContext(rank, topo.world), channel)
        except TPSetupError:
            raise                   # another rank failed; the start-up exchange has happened
        except Exception as e:
            channel.agree_startup(None, f"{type(e).__name__}: {e}")
            raise
        del loaded
        logger.info("rank %d ready: %d KV blocks", rank, runner.num_blocks)
        try:
            while (plan := channel.receive()) is not None:
                runner.execute(plan)
        except RuntimeError as e:   # gloo: "Connection closed by peer", or a collective timed out
            first = str(e).splitlines()[0] if str(e) else ""
            raise TPFailedError(
                f"rank {rank} lost the tensor-parallel group ({type(e).__name__}: {first}); the engine on "
                f"node 0 ({topo.master_addr}:{topo.master_port}) or another rank has probably stopped or "
                f"died: restart this node's workers together with it") from e
    finally:
        leave()


def spawned_worker(rank: int, topo: Topology, threads: int, parent_pid: int, log_level: str) -> None:
    """Entry of a worker process spawned by rank 0 (torch.multiprocessing, spawn start method)."""
    # Ctrl-C in a terminal reaches the whole process group; rank 0 decides when workers stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(format=f"%(asctime)s %(levelname)s rank{rank} %(name)s: %(message)s")
    logging.getLogger("lmserve").setLevel(log_level)
    _exit_with_parent(parent_pid)
    try:
        serve_rank(rank, topo, threads)
    except Exception as e:
        # rank 0 reports the consequence; this line says where it started
        print(f"lmserve tensor-parallel worker rank {rank}: {type(e).__name__}: {e}", file=sys.stderr,
              flush=True)
        sys.exit(1)


def run_node(cfg, device_type: str) -> None:
    """`lmserve serve worker`: run this node's ranks (node_rank > 0) until rank 0 stops them."""
    from lmserve.engine.tp.rendezvous import topology
    from lmserve.engine.tp.validate import check_placement, threads_per_rank
    from lmserve.engine.tp.workers import LocalWorkers
    if cfg.node_rank == 0:
        raise ValueError("--node-rank 0 runs the engine itself: start `lmserve serve api_server` "
                         "(or chat) there; `lmserve serve worker` is for --node-rank 1 and above")
    check_placement(cfg, device_type)
    topo = topology(cfg, device_type)
    ranks = list(topo.local_ranks)
    workers = LocalWorkers(topo, ranks[1:], threads_per_rank(cfg), logging.getLogger("lmserve").level)
    try:
        serve_rank(ranks[0], topo, threads_per_rank(cfg))
    finally:
        workers.stop()
