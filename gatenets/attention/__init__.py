"""Attention layers built around sigmoid gates: gated attention, the gated attention unit and
sigmoid attention. (Feed-forward blocks, heads and routers are in :mod:`gatenets.blocks`.)"""

from gatenets.attention._core import RoPE as RoPE
from gatenets.attention.gated import GatedAttention as GatedAttention
from gatenets.attention.gated import GatedAttentionGates as GatedAttentionGates
from gatenets.attention.gau import GatedAttentionUnit as GatedAttentionUnit
from gatenets.attention.gau import GAUGates as GAUGates
from gatenets.attention.sigmoid import SigmoidAttention as SigmoidAttention
from gatenets.attention.sigmoid import SigmoidAttentionGates as SigmoidAttentionGates

__all__ = [
    "GAUGates",
    "GatedAttention",
    "GatedAttentionGates",
    "GatedAttentionUnit",
    "RoPE",
    "SigmoidAttention",
    "SigmoidAttentionGates",
]
