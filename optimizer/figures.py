"""The evaluator's figures, now in the kernel (`modelroll.figures`) so the controller can show them too.

Kept for importers outside this package's cleanup (bench/optimize.py); new code imports `modelroll.figures`.
"""

from modelroll.figures import QUALITY_METRICS, Figures, LatencyFigures, MemoryFigures, QualityFigures

__all__ = ["QUALITY_METRICS", "Figures", "LatencyFigures", "MemoryFigures", "QualityFigures"]
