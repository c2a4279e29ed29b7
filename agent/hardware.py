"""What this machine has, as the agent reports it to the controller."""

from __future__ import annotations

import os
import platform
from collections.abc import Mapping

import onnxruntime as ort

from common.types import HardwareProfile, validate_hardware_class

AGENT_VERSION = "0.1.0"


def _memory_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def detect(hardware_class: str, labels: Mapping[str, str] | None = None) -> HardwareProfile:
    return HardwareProfile(
        hardware_class=validate_hardware_class(hardware_class),
        cpu_cores=os.cpu_count() or 0,
        memory_bytes=_memory_bytes(),
        execution_providers=tuple(ort.get_available_providers()),
        os=f"{platform.system()} {platform.release()}",
        onnxruntime_version=ort.__version__,
        agent_version=AGENT_VERSION,
        labels=dict(labels or {}),
    )
