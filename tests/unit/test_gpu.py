"""The GPU path degrades to "no GPU" for real on machines without NVIDIA (this one)."""

from __future__ import annotations

import os
import shutil

import pytest

from app.core.runtime import gpu

has_nvidia = shutil.which("nvidia-smi") is not None or os.path.exists("/dev/nvidiactl")


@pytest.mark.skipif(has_nvidia, reason="this machine has an NVIDIA GPU")
def test_without_nvidia_there_is_no_gpu_information() -> None:
    assert gpu.devices() is None
    assert gpu.process_memory([os.getpid()]) == {}
    reason = gpu.unavailable_reason()
    assert reason is not None and reason.startswith("No NVIDIA GPU")


@pytest.mark.skipif(not has_nvidia, reason="needs an NVIDIA GPU")
def test_with_nvidia_devices_report_memory() -> None:
    devices = gpu.devices()
    assert devices and all(d.total_bytes >= d.used_bytes > 0 for d in devices)
    assert gpu.unavailable_reason() is None
