"""Where collective operations put their tensors: the one rule shared by the refresh and the queues."""

from __future__ import annotations

import torch

__all__ = ["comm_device"]


def comm_device(backend: str, device: torch.device) -> torch.device:
    """Where the tensors of a collective (the refresh's all-gather, the queues' row gather) live for a backend.

    A group that can move CPU tensors (``gloo``, or a mixed ``"cpu:gloo,cuda:nccl"`` group) gathers on
    the CPU; an NCCL-only group needs CUDA tensors, on the device the refresh ran on (each rank its own
    GPU), or the current CUDA device when the refresh ran on the CPU.
    """
    if "nccl" not in backend or "gloo" in backend or "mpi" in backend:
        return torch.device("cpu")
    if device.type == "cuda" and device.index is not None:
        return device
    return torch.device("cuda", torch.cuda.current_device())
