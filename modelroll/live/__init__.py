"""The live channel between router, controller and worker; `open_channel` picks the backend from settings.

Embedded mode: call `open_channel` once per process and hand the one in-process channel to every service.
"""

from __future__ import annotations

from modelroll.live.base import Job, LiveChannel, Sample, SampleBatch, SplitConfig, Subscription
from modelroll.settings import Settings

__all__ = ["Job", "LiveChannel", "Sample", "SampleBatch", "SplitConfig", "Subscription", "open_channel"]


def open_channel(settings: Settings) -> LiveChannel:
    """The Redis channel when `settings.redis_url` is set, else a new in-process one."""
    if settings.redis_url:
        from modelroll.live.redis_backend import RedisChannel  # redis is only imported when used

        return RedisChannel(settings.redis_url, prefix=settings.redis_prefix, timeout_s=settings.redis_timeout_s,
                            samples_max_len=settings.live_samples_max_len)
    from modelroll.live.memory import MemoryChannel

    return MemoryChannel(samples_max_len=settings.live_samples_max_len,
                         predictions_max_len=settings.live_predictions_max_len)
