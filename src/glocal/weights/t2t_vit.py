"""Checkpoint layout of T2T-ViT's official releases (yitu-opensource/T2T-ViT ``.pth.tar`` files).

The releases nest the weights under ``state_dict`` (and ``state_dict_ema``, which the README recommends: pass
``ema=True``), sometimes with DataParallel's ``module.`` prefix; both are unwrapped on reading. glocal's T2T-ViT keeps
the official names, with one exception: the Performer T2T layers' feed-forward is ``nn.Sequential(Linear, GELU,
Linear, Dropout)`` in ``models/token_performer.py`` (``mlp.0``, ``mlp.2``), glocal's shared ``Mlp`` (``mlp.fc1``,
``mlp.fc2``). The Performer's fixed random features ``w``, the fused ``kqv`` projection (split k, q, v) and the
fixed sinusoidal ``pos_embed`` keep their names and are loaded as stored. The ``t2t_vit_t_*`` releases (token
transformer layers, whose feed-forward is timm's ``Mlp``) load with glocal's own layout.
"""

from __future__ import annotations

from glocal.weights.layout import KeyMap, Layout, register_layout

__all__ = ["T2T_PERFORMER"]

_PERFORMER_MAP = KeyMap(
    [
        ("tokens_to_token.attention{n}.mlp.0.{*}", "tokens_to_token.attention{n}.mlp.fc1.{*}"),
        ("tokens_to_token.attention{n}.mlp.2.{*}", "tokens_to_token.attention{n}.mlp.fc2.{*}"),
        ("{*}", "{*}"),
    ]
)

T2T_PERFORMER = register_layout(
    Layout.renaming(
        _PERFORMER_MAP,
        name="t2t-official",
        family="t2t_vit",
        description="yitu-opensource/T2T-ViT releases with Performer T2T layers (mlp.0/mlp.2)",
        markers=(r"^tokens_to_token\.attention1\.mlp\.0\.weight$",),
    )
)
