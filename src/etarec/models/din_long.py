"""DIN (long) (the ETA paper's Table 4): DIN's target attention over the short window, plus the
avg-pooled long window as in the Avg-Pooling DNN."""
from __future__ import annotations

from etarec.models.avg_pool import AvgPool


class DINLong(AvgPool):
    short_window_attention = True
