"""Runtimes: the one place that knows an inference engine. Each runtime is a small class with the same methods.

Nothing outside this package imports onnxruntime, TensorRT or CUDA bindings; optional ones are imported lazily
by their runtime, and a missing one names the extra to install. This module is only the factory; what runtimes
share (protocol, :class:`Latency`, errors, timing loop) is in :mod:`edgeprune.runtimes.base`, re-exported here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from edgeprune.runtimes.base import Latency, Runtime, RuntimeFailure, RuntimeMissing

if TYPE_CHECKING:
    from edgeprune.core.targets import Target

__all__ = ["Latency", "Runtime", "RuntimeFailure", "RuntimeMissing", "get_runtime"]


def get_runtime(target: Target) -> Runtime:
    """The runtime a target names, configured by the target; optional dependencies are imported here, lazily.

    On a remote device, trtexec runs there through the device (it needs nothing else there); the other runtimes run
    inside edgeprune's agent there (:class:`edgeprune.runtimes.remote.RemoteRuntime`).
    """
    if target.device != "local":
        from edgeprune.devices.transport import open_device

        device = open_device(target.device, target.agent_python)
        if target.runtime == "trtexec":
            from edgeprune.runtimes.trtexec import TrtexecRuntime

            return TrtexecRuntime(target, device)
        from edgeprune.runtimes.remote import RemoteRuntime

        return RemoteRuntime(target, device)
    if target.runtime == "onnxruntime":
        from edgeprune.runtimes.onnxruntime import OrtRuntime

        return OrtRuntime(target)
    if target.runtime == "tensorrt":
        from edgeprune.runtimes.tensorrt import TensorRTRuntime

        return TensorRTRuntime(target)
    if target.runtime == "trtexec":
        from edgeprune.runtimes.trtexec import TrtexecRuntime

        return TrtexecRuntime(target)
    if target.runtime == "torch-cuda":
        from edgeprune.runtimes.torch_cuda import TorchCudaRuntime

        return TorchCudaRuntime(target)
    raise RuntimeMissing(f"runtime {target.runtime!r} is not available in this edgeprune")
