"""Pure ``nn.Module`` implementations of the neural models (no I/O, no downloads).

``build_model(name)`` builds a model with random weights whose ``state_dict()``
has exactly the key layout of the official released checkpoint ``name``.
"""
from __future__ import annotations

MODEL_NAMES_AOT = (
    "aott", "aots", "aotb", "aotl", "r50_aotl", "swinb_aotl",
    "deaott", "deaots", "deaotb", "deaotl", "r50_deaotl", "swinb_deaotl",
)
MODEL_NAMES_E2FGVI = ("e2fgvi", "e2fgvi_hq")


def build_model(name: str):
    """Build the model ``name`` (an AOT/DeAOT variant or ``e2fgvi``/``e2fgvi_hq``) with random weights."""
    name = name.lower()
    if name in MODEL_NAMES_AOT:
        from .aot import build_aot

        return build_aot(name)
    if name in MODEL_NAMES_E2FGVI:
        from .e2fgvi import build_e2fgvi

        return build_e2fgvi(hq=name == "e2fgvi_hq")
    raise KeyError(f"unknown model {name!r}; known: {', '.join(MODEL_NAMES_AOT + MODEL_NAMES_E2FGVI)}")

