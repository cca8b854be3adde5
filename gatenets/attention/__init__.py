"""Attention layers built around sigmoid gates: gated attention, the gated attention unit,
sigmoid attention, the sigmoid router of a mixture of experts, and sigmoid-gated heads."""

from gatenets.attention.gated import GatedAttention as GatedAttention
from gatenets.attention.gated import GatedAttentionGates as GatedAttentionGates
from gatenets.attention.gau import GatedAttentionUnit as GatedAttentionUnit
from gatenets.attention.gau import GAUGates as GAUGates
from gatenets.attention.heads import BinaryHead as BinaryHead
from gatenets.attention.heads import BinaryHeadGates as BinaryHeadGates
from gatenets.attention.heads import GatedFeedForward as GatedFeedForward
from gatenets.attention.heads import GatedFeedForwardGates as GatedFeedForwardGates
from gatenets.attention.router import ExpertBias as ExpertBias
from gatenets.attention.router import RouterGates as RouterGates
from gatenets.attention.router import Routing as Routing
from gatenets.attention.router import SigmoidMoE as SigmoidMoE
from gatenets.attention.router import SigmoidRouter as SigmoidRouter
from gatenets.attention.sigmoid import SigmoidAttention as SigmoidAttention
from gatenets.attention.sigmoid import SigmoidAttentionGates as SigmoidAttentionGates

__all__ = [
    "BinaryHead",
    "BinaryHeadGates",
    "ExpertBias",
    "GAUGates",
    "GatedAttention",
    "GatedAttentionGates",
    "GatedAttentionUnit",
    "GatedFeedForward",
    "GatedFeedForwardGates",
    "RouterGates",
    "Routing",
    "SigmoidAttention",
    "SigmoidAttentionGates",
    "SigmoidMoE",
    "SigmoidRouter",
]
