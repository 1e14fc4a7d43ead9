"""How many CPU threads each training process may use: the host's cores shared between the
harness processes on that host, never more.

torchrun sets ``OMP_NUM_THREADS=1`` only for ``--nproc_per_node`` > 1; two agents on one host
(``--nnodes=2 --nproc_per_node=1``, or a user's own ``OMP_NUM_THREADS``) would each take every
core. Oversubscribed oneDNN convolutions are slower, and a session reported them dying in the first
training step (SIGSEGV at width 8, SIGFPE at width 4, channels_last, 2 processes x 2 threads on 2
cores); the same runs with one thread per process never did. The processes on a host are counted
from the process group itself, so no launcher setting can get around the budget.
"""

from __future__ import annotations

import os
import socket
import sys

import ignite.distributed as idist
import torch


def available_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def processes_on_this_host() -> int:
    """How many processes of this run share this host (a collective: every rank must call it)."""
    if idist.get_world_size() == 1:
        return 1
    hosts = idist.all_gather(socket.gethostname())
    return hosts.count(socket.gethostname())


def limit_cpu_threads(device: torch.device) -> int:
    """Cap this process's intra-op threads at its share of the host's cores; returns the threads used."""
    sharing = processes_on_this_host()  # on every rank, whatever the device: it is a collective
    if device.type != "cpu":
        return torch.get_num_threads()
    budget = max(1, available_cores() // sharing)
    if torch.get_num_threads() > budget:
        if idist.get_rank() == 0:
            print(
                f"note: {torch.get_num_threads()} threads per process x {sharing} processes on {available_cores()} "
                f"cores; using {budget} per process (oversubscribed oneDNN kernels are slower and have crashed)",
                file=sys.stderr,
                flush=True,
            )
        torch.set_num_threads(budget)
    return torch.get_num_threads()
