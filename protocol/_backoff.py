"""The reconnect ladder (RC §6.4): capped exponential backoff with full jitter.

Pure: the random source is injected, so a test can pin every delay.
"""

from __future__ import annotations

from collections.abc import Callable

#: ``uniform(low, high) -> float``, e.g. ``random.Random().uniform``.
Uniform = Callable[[float, float], float]

# 2**63 seconds is already far beyond any cap; larger exponents only risk float overflow.
_MAX_EXPONENT = 63


def ladder_bound(failures: int, *, base: float, cap: float) -> float:
    """The upper end of the wait after ``failures`` consecutive failures: ``min(cap, base·2ⁿ)``."""
    if failures < 0:
        raise ValueError(f"failures must be >= 0, got {failures}")
    return min(cap, base * 2.0 ** min(failures, _MAX_EXPONENT))


def ladder_delay(failures: int, *, base: float, cap: float, uniform: Uniform) -> float:
    """The full-jitter wait before the next dial: ``uniform(0, min(cap, base·2ⁿ))``."""
    return uniform(0.0, ladder_bound(failures, base=base, cap=cap))
