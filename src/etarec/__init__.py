"""etarec: CTR prediction with long user behaviour sequences (ETA and its baselines)."""

__version__ = "0.1.0"
