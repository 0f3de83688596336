"""Stable ESMFold2 stage names, the module each one reads, and the pair-representation reductions.

Every layer name starts with its stage (``esmc``, ``input_embedder``, ``language_model``,
``msa_encoder``, ``lm_encoder``, ``folding_trunk``, ``parcae``, ``distogram``, ``diffusion``,
``confidence``), so users can select and group layers by prefix. :func:`layer_names` lists them in
the order the model computes them. ``docs/esmfold2-layers.md`` is the user-facing version of
:data:`STAGE_MODULES`.

Pair representations ``[L, L, C]`` become per-residue features by a masked mean over the partner
residue (:func:`reduce_pair`); raw pair tensors are kept only for layers named in the
``raw_pair_layers`` option, stored as ``<layer>.raw`` tokens of shape ``(L*L, C)`` (row-major: row
``i*L + j`` is the pair ``(i, j)``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

#: stage name pattern -> (module path in ``transformers``' EsmFold2Model, what is read, representation)
STAGE_MODULES: dict[str, tuple[str, str, str]] = {
    "esmc.<i>": ("esmc (hidden_states[i], via EsmFold2Model._compute_lm_hidden_states)", "output", "single"),
    "input_embedder.single": ("input_embedder", "output[0] single_inputs", "single"),
    "input_embedder.pair": ("input_embedder", "output[1] initial pair state", "pair"),
    "language_model": ("language_model", "output (before the LM dropout)", "pair"),
    "msa_encoder.<i>": ("msa_encoder.layers[i]", "output[1] pair", "pair"),
    "lm_encoder.<i>": ("lm_encoder.layers[i]", "output in trunk loop 0", "pair"),
    "folding_trunk[.loop<j>].<i>": ("folding_trunk.layers[i] during trunk loop j", "output", "pair"),
    "parcae": ("parcae.output_stack", "output (decoded recurrence state)", "pair"),
    "distogram": ("distogram_head", "input (parcae + parcae^T, derived from parcae)", "pair"),
    "diffusion.conditioning.pair": ("structure_head.conditioning.pair_transition_1", "output", "pair"),
    "diffusion[.step<k>].single": ("structure_head.conditioning", "output (noise-conditioned single)", "single"),
    "diffusion[.step<k>].atom_encoder": ("structure_head.atom_encoder", "output[0] per-token", "single"),
    "diffusion[.step<k>].token_transformer.<i>": ("structure_head.token_transformer.layers[i]", "output", "single"),
    "confidence.input": ("confidence_head.input_embedder", "output (before the distance bins)", "pair"),
    "confidence.pair.<i>": ("confidence_head.folding_trunk.layers[i]", "stack input + output (what the heads read)", "pair"),
    "confidence.single": ("confidence_head.row_attention_pooling", "output", "single"),
}

PAIR_REDUCTIONS = ("row", "rowcol")
TRUNK_STAGES = ("input_embedder", "language_model", "msa_encoder", "lm_encoder", "folding_trunk", "parcae", "distogram")
RAW_SUFFIX = ".raw"


@dataclass(frozen=True)
class LayerRef:
    """A parsed layer name: its stage, block index, trunk loop / diffusion step, and representation."""

    name: str
    stage: str  # first component: esmc, input_embedder, ..., confidence
    part: str  # e.g. "single", "pair", "token_transformer", "" when the stage has one tensor
    index: int | None  # block index within the stage
    loop: int | None  # trunk loop (folding_trunk only)
    step: int | None  # diffusion step (per-step diffusion parts only)
    is_pair: bool
    raw: bool  # ``<layer>.raw``: the raw (L*L, C) pair tensor

    @property
    def base(self) -> str:
        """The name without the ``.raw`` suffix."""
        return self.name[: -len(RAW_SUFFIX)] if self.raw else self.name


_PATTERNS = [
    (re.compile(r"^esmc\.(?P<index>\d+)$"), "esmc", "", False),
    (re.compile(r"^input_embedder\.single$"), "input_embedder", "single", False),
    (re.compile(r"^input_embedder\.pair$"), "input_embedder", "pair", True),
    (re.compile(r"^language_model$"), "language_model", "", True),
    (re.compile(r"^msa_encoder\.(?P<index>\d+)$"), "msa_encoder", "", True),
    (re.compile(r"^lm_encoder\.(?P<index>\d+)$"), "lm_encoder", "", True),
    (re.compile(r"^folding_trunk\.(?:loop(?P<loop>\d+)\.)?(?P<index>\d+)$"), "folding_trunk", "", True),
    (re.compile(r"^parcae$"), "parcae", "", True),
    (re.compile(r"^distogram$"), "distogram", "", True),
    (re.compile(r"^diffusion\.conditioning\.pair$"), "diffusion", "conditioning.pair", True),
    (re.compile(r"^diffusion\.(?:step(?P<step>\d+)\.)?single$"), "diffusion", "single", False),
    (re.compile(r"^diffusion\.(?:step(?P<step>\d+)\.)?atom_encoder$"), "diffusion", "atom_encoder", False),
    (re.compile(r"^diffusion\.(?:step(?P<step>\d+)\.)?token_transformer\.(?P<index>\d+)$"), "diffusion", "token_transformer", False),
    (re.compile(r"^confidence\.input$"), "confidence", "input", True),
    (re.compile(r"^confidence\.pair\.(?P<index>\d+)$"), "confidence", "pair", True),
    (re.compile(r"^confidence\.single$"), "confidence", "single", False),
]


def parse_layer(name: str) -> LayerRef | None:
    """Parse a layer name (see :data:`STAGE_MODULES`); None when it is not an ESMFold2 layer name."""
    raw = name.endswith(RAW_SUFFIX)
    base = name[: -len(RAW_SUFFIX)] if raw else name
    for pattern, stage, part, is_pair in _PATTERNS:
        m = pattern.match(base)
        if not m:
            continue
        index, loop, step = (None if m.groupdict().get(g) is None else int(m.group(g)) for g in ("index", "loop", "step"))
        if raw and not is_pair:
            return None
        return LayerRef(name, stage, part, index, loop, step, is_pair, raw)
    return None


@dataclass(frozen=True)
class StageLayout:
    """What the model's config and the extraction options say about the layer list."""

    esmc_layers: int  # ESMC transformer layers (hidden states 0..esmc_layers)
    msa_layers: int  # 0 when the checkpoint has no MSA encoder (ESMFold2-Fast)
    lm_encoder_layers: int
    trunk_layers: int
    trunk_loops: int  # loops run (num_loops + 1 in the port)
    kept_loops: tuple[int, ...] | None  # None: only the last loop, unprefixed names
    diffusion_layers: int
    diffusion_steps: int  # denoiser calls actually run
    kept_steps: tuple[int, ...] | None  # None: only the final step, unprefixed names
    confidence_layers: int
    raw_pair_layers: tuple[str, ...] = ()


def layer_names(layout: StageLayout) -> list[str]:
    """Every layer name in model order; ``<layer>.raw`` follows its layer when requested."""
    names = [f"esmc.{i}" for i in range(layout.esmc_layers + 1)]
    names += ["input_embedder.single", "input_embedder.pair", "language_model"]
    names += [f"msa_encoder.{i}" for i in range(layout.msa_layers)]
    names += [f"lm_encoder.{i}" for i in range(layout.lm_encoder_layers)]
    if layout.kept_loops is None:
        names += [f"folding_trunk.{i}" for i in range(layout.trunk_layers)]
    else:
        for j in layout.kept_loops:
            names += [f"folding_trunk.loop{j}.{i}" for i in range(layout.trunk_layers)]
    names += ["parcae", "distogram", "diffusion.conditioning.pair"]
    steps = [None] if layout.kept_steps is None else list(layout.kept_steps)
    for k in steps:
        prefix = "diffusion." if k is None else f"diffusion.step{k}."
        names += [prefix + "single", prefix + "atom_encoder"]
        names += [f"{prefix}token_transformer.{i}" for i in range(layout.diffusion_layers)]
    names += ["confidence.input"] + [f"confidence.pair.{i}" for i in range(layout.confidence_layers)]
    names += ["confidence.single"]
    raw = set(layout.raw_pair_layers)
    out = []
    for n in names:
        out.append(n)
        if n in raw:
            out.append(n + RAW_SUFFIX)
    return out


def reduce_pair(pair: torch.Tensor, mask: torch.Tensor, mode: str = "row") -> torch.Tensor:
    """Per-residue features from a pair representation by a masked mean over the partner residue.

    ``row``:    f_i = sum_j m_j z_ij / sum_j m_j                       -> (B, L, C)
    ``rowcol``: [row mean, column mean g_j = sum_i m_i z_ij / sum_i m_i] -> (B, L, 2C)

    pair: (B, L, L, C); mask: (B, L), 1 for real residues, 0 for padding. Rows of padded residues are
    meaningless and are dropped by the caller. The mean is taken in float32 whatever the
    model dtype, so bf16 runs do not lose the small per-partner contributions.
    """
    if pair.ndim != 4 or mask.shape != pair.shape[:2] or pair.shape[1] != pair.shape[2]:
        raise ValueError(f"reduce_pair needs pair (B, L, L, C) and mask (B, L); got {tuple(pair.shape)}, {tuple(mask.shape)}")
    if mode not in PAIR_REDUCTIONS:
        raise ValueError(f"unknown pair reduction {mode!r}; use one of {', '.join(PAIR_REDUCTIONS)}")
    m = mask.to(torch.float32)
    count = m.sum(dim=1).clamp(min=1.0)[:, None, None]  # (B, 1, 1)
    b, n, _, c = pair.shape
    pair32 = pair.to(torch.float32)
    # Batched (1 x L) @ (L x C) products: no copy of the pair tensor (it is the largest thing around).
    row = (m[:, None, None, :] @ pair32).squeeze(2) / count
    if mode == "row":
        return row
    col = (m[:, None, :] @ pair32.reshape(b, n, n * c)).reshape(b, n, c) / count
    return torch.cat([row, col], dim=-1)
