"""Runtimes run the workloads of a service color; LocalRuntime is the one we ship."""

from conveyor.runtimes.base import Endpoint, Handle, RunState, Runtime, RuntimeStartError, Workload
from conveyor.runtimes.local import LocalRuntime, free_port, read_proc_stat, tail

__all__ = [
    "Endpoint",
    "Handle",
    "LocalRuntime",
    "RunState",
    "Runtime",
    "RuntimeStartError",
    "Workload",
    "free_port",
    "read_proc_stat",
    "tail",
]
