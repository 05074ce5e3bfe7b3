"""SeMask on the Mix Transformer and the SegFormer baselines; importing registers presets, weights, converters.

``config`` (settings and sizes), ``encoder`` (MiT), ``heads`` (SegFormer decode heads), ``model``
(the segmenter, presets, released weights), ``convert`` (official key schemes -> ours).
"""

from . import convert  # noqa: F401  (registers the official-checkpoint converters)
from .config import SeMaskMiTConfig
from .encoder import MixTransformer
from .model import SeMaskMiT

__all__ = ["MixTransformer", "SeMaskMiT", "SeMaskMiTConfig"]
