"""Building blocks shared by glocal's families, one concept per module."""

from glocal.layers.attention import MultiHeadAttention, attend, attend_logits
from glocal.layers.block import TransformerBlock, layer_norm_eps6
from glocal.layers.bot import MHSA2d
from glocal.layers.context import GlobalContext, gc_block, se_block, snl_block
from glocal.layers.drop import DropPath, drop_path_rates
from glocal.layers.mlp import Mlp
from glocal.layers.non_local import NonLocal2d
from glocal.layers.patch_embed import PatchEmbed
from glocal.layers.pos_embed import resample_grid, resample_tokens
from glocal.layers.probe import AttentionProbe, explicit_attention
from glocal.layers.rel_pos import RelPosLogits

__all__ = [
    "AttentionProbe",
    "DropPath",
    "GlobalContext",
    "MHSA2d",
    "Mlp",
    "MultiHeadAttention",
    "NonLocal2d",
    "PatchEmbed",
    "RelPosLogits",
    "TransformerBlock",
    "attend",
    "attend_logits",
    "drop_path_rates",
    "explicit_attention",
    "gc_block",
    "layer_norm_eps6",
    "resample_grid",
    "resample_tokens",
    "se_block",
    "snl_block",
]
