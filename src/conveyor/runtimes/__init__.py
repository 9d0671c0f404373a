"""Runtimes run the processes of a service color; LocalRuntime is the one we ship."""

from conveyor.runtimes.base import ColorSpec, Instance, Runtime, RuntimeStartError
from conveyor.runtimes.local import LocalRuntime, free_port, read_proc_stat, tail

__all__ = [
    "ColorSpec",
    "Instance",
    "LocalRuntime",
    "Runtime",
    "RuntimeStartError",
    "free_port",
    "read_proc_stat",
    "tail",
]
