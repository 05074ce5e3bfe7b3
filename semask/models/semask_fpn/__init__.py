"""SeMask Swin + Semantic-FPN and the Swin-FPN baselines (paper Table 2; spec semask_fpn.md).

``model`` (config, segmenter, presets, released weights), ``head`` (the FPN decode head),
``convert`` (official mmseg checkpoints -> ours); importing registers all three.
"""

from . import convert  # noqa: F401  (registers the official-checkpoint converter)
from .head import SemanticFPNHead
from .model import SeMaskFPN, SeMaskFPNConfig, official_global_stages

__all__ = ["SeMaskFPN", "SeMaskFPNConfig", "SemanticFPNHead", "official_global_stages"]
