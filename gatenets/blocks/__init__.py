"""Sigmoid-gated blocks that are not attention: the gated feed-forward block (SwiGLU/GLU), the
binary head, and the sigmoid router of a mixture of experts."""

from gatenets.blocks.heads import BinaryHead as BinaryHead
from gatenets.blocks.heads import BinaryHeadGates as BinaryHeadGates
from gatenets.blocks.heads import GatedFeedForward as GatedFeedForward
from gatenets.blocks.heads import GatedFeedForwardGates as GatedFeedForwardGates
from gatenets.blocks.router import ExpertBias as ExpertBias
from gatenets.blocks.router import RouterGates as RouterGates
from gatenets.blocks.router import Routing as Routing
from gatenets.blocks.router import SigmoidMoE as SigmoidMoE
from gatenets.blocks.router import SigmoidRouter as SigmoidRouter

__all__ = [
    "BinaryHead",
    "BinaryHeadGates",
    "ExpertBias",
    "GatedFeedForward",
    "GatedFeedForwardGates",
    "RouterGates",
    "Routing",
    "SigmoidMoE",
    "SigmoidRouter",
]
