"""Mixed precision for train, eval and predict: which autocast dtype a device can run fast.

CUDA runs bf16 (fp16 where the GPU lacks bf16) or fp16. A CPU runs bf16 autocast at speed only
with native bf16 instructions (AVX512-BF16 or AMX); without them PyTorch emulates bf16 and a
model gets many times slower, so that is an error unless ``SEMASK_ALLOW_SLOW_AMP=1`` (tests).
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Literal

import torch

logger = logging.getLogger(__name__)

AmpDtype = Literal["bf16", "fp16"]
ALLOW_SLOW_ENV = "SEMASK_ALLOW_SLOW_AMP"
_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_has_native_bf16() -> bool:
    """True when the CPU has bf16 instructions (read from /proc/cpuinfo on Linux; elsewhere
    from torch's detected ISA, which reports AMX only)."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
        return any(flag in flags for flag in _BF16_FLAGS)
    except OSError:
        return "amx" in torch.backends.cpu.get_cpu_capability().lower()


def resolve_amp_dtype(device: torch.device | str, amp: AmpDtype | None) -> torch.dtype | None:
    """The autocast dtype for ``amp`` on ``device`` (None: float32), or a ValueError saying why not."""
    if amp is None:
        return None
    if amp not in ("bf16", "fp16"):
        raise ValueError(f"amp must be 'bf16' or 'fp16', got {amp!r}")
    device = torch.device(device)
    if device.type == "cuda":
        if amp == "bf16" and not torch.cuda.is_bf16_supported():
            logger.warning("bf16 is not supported on this GPU; using fp16")
            return torch.float16
        return torch.bfloat16 if amp == "bf16" else torch.float16
    if device.type != "cpu":
        raise ValueError(f"amp is supported on cuda and cpu, not {device.type}")
    if amp == "fp16":
        raise ValueError("amp=fp16 needs CUDA; on a CPU use amp=bf16 (if the CPU has native bf16)")
    if not cpu_has_native_bf16() and os.environ.get(ALLOW_SLOW_ENV) != "1":
        raise ValueError(
            "amp=bf16 on this CPU would be emulated (no avx512_bf16/amx_bf16) and many times slower "
            f"than float32; run without amp, or set {ALLOW_SLOW_ENV}=1 to force it"
        )
    return torch.bfloat16


def autocast(device: torch.device | str, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """``torch.autocast`` for ``dtype`` on ``device``; a no-op context for float32 (None)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)
