"""Run ESMFold2 as a feature extractor: the released model, only the stages the layers need, reproducibly.

The order of work for one batch:

1. ESMC (``EsmFold2Model._compute_lm_hidden_states``): per-residue hidden states of every layer.
   A request for ``esmc.*`` layers alone stops here.
2. The trunk (``EsmFold2Model.forward``) with forward hooks on the modules of
   :data:`esmfold2_model.stages.STAGE_MODULES`. The run stops (an internal exception raised from a
   hook) as soon as the last requested trunk layer is captured.
3. Diffusion sampling, driven here rather than by ``EsmFold2Model.fold`` so that every random draw
   (initial noise, per-step rotations and translations) comes from a generator seeded per sample:
   a sample's structure and features are then the same alone or in a batch.
4. The confidence head on the sampled coordinates: pLDDT, pTM, ipTM and its own layers.

The model runs as released (``lm_dropout=on``, the default): the released config keeps the
language-model dropout on at inference (``lm_encoder.lm_dropout = 0.25``, resampled in every trunk
loop, ``per_loop_lm_dropout = True``), and so does this extractor. Every random draw comes from a
generator seeded per sample, so two runs give identical features and a sample's features do not
depend on its batch: the LM dropout mask of loop j (:func:`lm_dropout_mask`, seeded by ``seed`` and
j), the initial pair state (seeded by ``seed``, drawn at the sample's own length) and the diffusion
noise (seeded by ``seed`` and the diffusion-sample number). The port's ``forward`` / ``fold`` given
the same draws produce the same pair states, coordinates and scores (tested).

``lm_dropout=off`` runs the model without that dropout. The MSA encoder gets the same input in
every loop in both modes, and the LM encoder too when dropout is off, so their output is computed
once and reused (bit-identical, up to ~1/4 of the trunk's work saved).

Pair layers are reduced to per-residue features inside the hook (:func:`stages.reduce_pair`), so a
request for many pair layers costs ``O(L * C)`` memory each, not ``O(L^2 * C)``.
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence, cast

import numpy as np
import torch

from esmfold2_model import stages
from esmfold2_model.featurize import Featurized, collate
from repalign.errors import RepalignError

OPTION_NAMES = (
    "loops", "num_loops", "diffusion_steps", "diffusion_samples", "sampling_steps_to_keep",
    "pair_reduction", "raw_pair_layers", "max_memory_gb", "seed", "structures_dir", "structure_format",
    "lm_dropout",
)
LM_DROPOUT_MODES = ("on", "off")

# Peak-memory model (bytes), see docs/esmfold2-layers.md: the trunk holds about TRUNK_PAIR_COPIES
# pair-sized tensors at once (recurrence state, initial and LM pair states, the triangle update's
# 4C-wide projection and its contraction, transition intermediates); the confidence head about
# CONFIDENCE_PAIR_COPIES per diffusion sample.
TRUNK_PAIR_COPIES = 16
CONFIDENCE_PAIR_COPIES = 8
LM_DROPOUT_PAIR_COPIES = 2  # the dropped copy of the LM pair state and one sample's mask


class _StopRun(Exception):
    """Raised from a hook once everything requested from the trunk is captured."""


def _parse_int(key: str, value: Any, minimum: int) -> int:
    try:
        out = int(str(value).strip())
    except ValueError:
        raise RepalignError(f"option {key}={value!r} is not an integer; pass e.g. options={{'{key}': '{minimum}'}}") from None
    if out < minimum:
        raise RepalignError(f"option {key}={out} must be at least {minimum}")
    return out


def _parse_index_list(key: str, value: str, allowed: str) -> tuple[int, ...] | str:
    text = str(value).strip().lower()
    if text in allowed.split("|"):
        return text
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise RepalignError(
            f"option {key}={value!r}; use {allowed.replace('|', ', ')} or comma-separated indices such as 0,5,-1"
        ) from None


def default_memory_limit_gb(device: str) -> float:
    """90% of the GPU's memory on CUDA, else 90% of the machine's RAM."""
    if device.startswith("cuda") and torch.cuda.is_available():
        return 0.9 * torch.cuda.get_device_properties(torch.device(device)).total_memory / 1e9
    try:
        return 0.9 * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
    except (ValueError, OSError, AttributeError):
        return 16.0


def stream_seed(seed: int, stream: str, index: int) -> int:
    """The seed of one named random stream (``lm_dropout``) at one index (the trunk loop): a 63-bit
    hash of the three, so streams and loops never share draws whatever the seed."""
    digest = hashlib.sha256(f"{stream}/{seed}/{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def lm_dropout_rate(config, opts: "ExtractionOptions") -> float:
    """The LM dropout probability the run applies in every trunk loop: the config's ``lm_dropout``
    when the config resamples it per loop (``per_loop_lm_dropout``, as released) and the option
    ``lm_dropout`` is on; else 0 (the port applies no LM dropout at inference without per-loop)."""
    lm = config.lm_encoder
    if opts.lm_dropout == "off" or not lm.per_loop_lm_dropout:
        return 0.0
    return float(lm.lm_dropout or 0.0)


def lm_dropout_mask(n: int, channels: int, p: float, seed: int, loop: int,
                    device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Keep-mask ``(n, n, channels)`` of the LM dropout in trunk loop ``loop``: independent
    Bernoulli(1 - p) draws, as ``F.dropout`` makes, from a generator on ``device`` seeded by
    ``(seed, loop)`` only, so a protein gets the same masks alone or in any batch. CPU and CUDA
    generators are different algorithms: the same seed gives other (equally valid) masks on a GPU."""
    g = torch.Generator(device=device).manual_seed(stream_seed(seed, "lm_dropout", loop))
    return torch.empty((n, n, channels), device=device, dtype=dtype).bernoulli_(1.0 - p, generator=g)


def apply_lm_dropout(pair: torch.Tensor, lengths: Sequence[int], p: float, seed: int, loop: int) -> torch.Tensor:
    """``F.dropout(pair, p, training=True)`` with the seeded masks of :func:`lm_dropout_mask`:
    ``z_ij * m_ij / (1 - p)`` on each sample's real ``n x n`` block; padding is left as it is
    (masked out downstream). pair: ``(B, L, L, C)``; lengths: real residues per sample."""
    out = pair.clone()
    for b, n in enumerate(lengths):
        mask = lm_dropout_mask(n, pair.shape[-1], p, seed, loop, pair.device, pair.dtype)
        out[b, :n, :n] = pair[b, :n, :n] * mask / (1.0 - p)
    return out


@dataclass(frozen=True)
class ExtractionOptions:
    """Model options (``--option KEY=VALUE``; strings are parsed). See docs/esmfold2-layers.md."""

    loops: tuple[int, ...] | str = "last"  # "last" | "all" | loop indices
    num_loops: int | None = None  # None: the checkpoint's config.num_loops
    diffusion_steps: int | None = None  # None: the config's inference_num_steps
    diffusion_samples: int = 1
    sampling_steps_to_keep: tuple[int, ...] | str = "final"  # "final" | "all" | step indices
    pair_reduction: str = "row"
    raw_pair_layers: tuple[str, ...] = ()
    max_memory_gb: float | None = None  # None: default_memory_limit_gb(device)
    seed: int = 0
    structures_dir: str | None = None
    structure_format: str = "pdb"  # "pdb" | "cif"
    lm_dropout: str = "on"  # "on": as released (seeded per sample and loop); "off": without LM dropout

    @classmethod
    def parse(cls, options: dict[str, Any], model: str) -> "ExtractionOptions":
        if "deterministic" in options:
            raise RepalignError("option deterministic is gone: features are always reproducible now; "
                                "pass options={'lm_dropout': 'off'} to run without the LM dropout")
        unknown = sorted(set(options) - set(OPTION_NAMES))
        if unknown:
            raise RepalignError(f"model {model}: unknown option(s) {', '.join(unknown)}; valid options: {', '.join(OPTION_NAMES)}")
        kw: dict[str, Any] = {}
        o = options
        if "loops" in o:
            kw["loops"] = _parse_index_list("loops", o["loops"], "last|all")
        if "num_loops" in o:
            kw["num_loops"] = _parse_int("num_loops", o["num_loops"], 0)
        if "diffusion_steps" in o:
            kw["diffusion_steps"] = _parse_int("diffusion_steps", o["diffusion_steps"], 1)
        if "diffusion_samples" in o:
            kw["diffusion_samples"] = _parse_int("diffusion_samples", o["diffusion_samples"], 1)
        if "sampling_steps_to_keep" in o:
            kw["sampling_steps_to_keep"] = _parse_index_list("sampling_steps_to_keep", o["sampling_steps_to_keep"], "final|all")
        if "pair_reduction" in o:
            mode = str(o["pair_reduction"]).strip().lower()
            if mode not in stages.PAIR_REDUCTIONS:
                raise RepalignError(f"option pair_reduction={mode!r}; use one of {', '.join(stages.PAIR_REDUCTIONS)}")
            kw["pair_reduction"] = mode
        if "raw_pair_layers" in o:
            value = o["raw_pair_layers"]
            names = value if isinstance(value, (list, tuple)) else str(value).split(",")
            kw["raw_pair_layers"] = tuple(n.strip() for n in names if n.strip())
            for n in kw["raw_pair_layers"]:
                ref = stages.parse_layer(n)
                if ref is None or not ref.is_pair or ref.raw:
                    raise RepalignError(
                        f"option raw_pair_layers: {n!r} is not a pair layer; name pair layers such as "
                        f"folding_trunk.0, parcae, distogram, confidence.pair.0"
                    )
        if "max_memory_gb" in o:
            try:
                kw["max_memory_gb"] = float(o["max_memory_gb"])
            except ValueError:
                raise RepalignError(f"option max_memory_gb={o['max_memory_gb']!r} is not a number; pass e.g. max_memory_gb=64") from None
            if not kw["max_memory_gb"] > 0:
                raise RepalignError("option max_memory_gb must be positive")
        if "seed" in o:
            kw["seed"] = _parse_int("seed", o["seed"], 0)
        if o.get("structures_dir") not in (None, ""):
            kw["structures_dir"] = str(o["structures_dir"])
        if "structure_format" in o:
            fmt = str(o["structure_format"]).strip().lower().lstrip(".")
            fmt = "cif" if fmt == "mmcif" else fmt
            if fmt not in ("pdb", "cif"):
                raise RepalignError(f"option structure_format={o['structure_format']!r}; use pdb or cif")
            kw["structure_format"] = fmt
        if "lm_dropout" in o:
            text = str(o["lm_dropout"]).strip().lower()
            if text not in LM_DROPOUT_MODES:
                raise RepalignError(f"option lm_dropout={o['lm_dropout']!r}; use on (as released, the default) or off")
            kw["lm_dropout"] = text
        return cls(**kw)


def _resolve_indices(key: str, spec: tuple[int, ...] | str, total: int, default: str) -> tuple[int, ...] | None:
    """None for the default (last/final only); else sorted absolute indices, validated."""
    if spec == default:
        return None
    if spec == "all":
        return tuple(range(total))
    assert not isinstance(spec, str)  # _parse_index_list gives one of the two words above or indices
    out = []
    for i in spec:
        j = i + total if i < 0 else i
        if not 0 <= j < total:
            raise RepalignError(f"option {key}: index {i} out of range; this run has {total} (0..{total - 1})")
        out.append(j)
    return tuple(sorted(set(out)))


def diffusion_step_count(config, diffusion_steps: int | None) -> int:
    """Denoiser calls the sampler makes: the port's Karras schedule after its sigma cap."""
    from transformers.models.esmfold2.generation_esmfold2 import EsmFold2FoldingMixin

    class _Schedule(EsmFold2FoldingMixin):
        def __init__(self, cfg):
            self.config = cfg

    schedule, _ = _Schedule(config)._build_noise_schedule(diffusion_steps, torch.device("cpu"))
    return len(schedule) - 1


def stage_layout(config, opts: ExtractionOptions) -> stages.StageLayout:
    loops = (config.num_loops if opts.num_loops is None else opts.num_loops) + 1  # the port runs num_loops + 1
    steps = diffusion_step_count(config, opts.diffusion_steps)
    return stages.StageLayout(
        esmc_layers=config.esmc_config.num_hidden_layers,
        msa_layers=config.msa_encoder.num_hidden_layers if config.msa_encoder.enabled else 0,
        lm_encoder_layers=config.lm_encoder.num_hidden_layers,
        trunk_layers=config.folding_trunk_num_hidden_layers,
        trunk_loops=loops,
        kept_loops=_resolve_indices("loops", opts.loops, loops, "last"),
        diffusion_layers=config.structure_head.diffusion_module.num_hidden_layers,
        diffusion_steps=steps,
        kept_steps=_resolve_indices("sampling_steps_to_keep", opts.sampling_steps_to_keep, steps, "final"),
        confidence_layers=config.confidence_head.num_hidden_layers,
        raw_pair_layers=opts.raw_pair_layers,
    )


def estimate_peak_bytes(lengths: Sequence[int], config, opts: ExtractionOptions, runs_confidence: bool, dtype_bytes: int) -> int:
    """Estimated peak memory of one padded batch (see docs/esmfold2-layers.md, "Memory guard").

    trunk:      B * L^2 * C * dtype_bytes * (TRUNK_PAIR_COPIES + LM_DROPOUT_PAIR_COPIES when LM dropout is on)
    raw layers: B * L^2 * C * 4 * len(raw_pair_layers)          (kept in float32 until returned)
    confidence: B * S * L^2 * C * dtype_bytes * CONFIDENCE_PAIR_COPIES   (S diffusion samples)
    diffusion pair biases (B * L^2 * heads * layers) are small beside these and are included.
    """
    b, n = len(lengths), max(lengths)
    c = config.pairwise_hidden_size
    pair = b * n * n * c
    copies = TRUNK_PAIR_COPIES + (LM_DROPOUT_PAIR_COPIES if lm_dropout_rate(config, opts) > 0 else 0)
    total = pair * dtype_bytes * copies + pair * 4 * len(opts.raw_pair_layers)
    if runs_confidence:
        diff = config.structure_head.diffusion_module
        total += b * n * n * diff.num_attention_heads * diff.num_hidden_layers * dtype_bytes
        total += pair * opts.diffusion_samples * dtype_bytes * CONFIDENCE_PAIR_COPIES
    return int(total)


@dataclass
class _Request:
    """What one run must capture and how far it must go."""

    refs: list[stages.LayerRef]
    layout: stages.StageLayout
    esmc: list[int] = field(default_factory=list)
    trunk: set[str] = field(default_factory=set)  # base names of trunk-stage layers to capture
    diffusion: set[str] = field(default_factory=set)
    confidence: set[str] = field(default_factory=set)
    raw: set[str] = field(default_factory=set)  # base names whose raw pair tensor is kept
    run_trunk: bool = False
    run_diffusion: bool = False
    run_confidence: bool = False  # also decides that the sampler runs to its last step


class EsmFold2Extractor:
    """Runs a loaded EsmFold2Model on featurised batches and returns per-sample features."""

    def __init__(self, model, opts: ExtractionOptions, hooks: bool = True):
        self.model = model
        self.opts = opts
        self.config = model.config
        self.layout = stage_layout(self.config, opts)
        self.hooks_enabled = hooks  # False only for measuring hook overhead
        self.num_loops = self.config.num_loops if opts.num_loops is None else opts.num_loops
        self.lm_dropout_p = lm_dropout_rate(self.config, opts)
        self.device = next(model.parameters()).device

    # ---- planning --------------------------------------------------------------------------------
    def plan(self, layers: Sequence[str], want_scores: bool) -> _Request:
        names = set(stages.layer_names(self.layout))
        refs = []
        for name in layers:
            ref = stages.parse_layer(name)
            if ref is None or name not in names:
                hint = " (raw pair tensors need options={'raw_pair_layers': '...'})" if name.endswith(stages.RAW_SUFFIX) else ""
                raise RepalignError(f"unknown ESMFold2 layer {name!r}{hint}; see docs/esmfold2-layers.md or 'repalign models' for the names")
            refs.append(ref)
        req = _Request(refs, self.layout)
        for ref in refs:
            if ref.stage == "esmc":
                assert ref.index is not None  # esmc.<index> names always carry one
                req.esmc.append(ref.index)
            elif ref.stage in stages.TRUNK_STAGES:
                req.trunk.add(ref.base)
            elif ref.stage == "diffusion":
                req.diffusion.add(ref.base)
            else:
                req.confidence.add(ref.base)
            if ref.raw:
                req.raw.add(ref.base)
        req.run_confidence = bool(req.confidence or want_scores)
        req.run_diffusion = bool(req.diffusion) or req.run_confidence
        req.run_trunk = bool(req.trunk) or req.run_diffusion
        return req

    # ---- running ---------------------------------------------------------------------------------
    @torch.no_grad()
    def run(self, samples: list[Featurized], layers: Sequence[str], want_scores: bool = False):
        """Features and scores of ``samples`` (one padded batch).

        Returns a list (one per sample) of ``(tokens, outputs, structure)``: ``tokens`` maps layer name
        to a float32 (L, D) array, ``outputs`` holds pLDDT / pTM / ipTM when the confidence head ran,
        ``structure`` the per-sample coordinates and the features needed to write a PDB file.
        """
        req = self.plan(layers, want_scores)
        feats = collate(samples, self.device)
        lengths = [s.num_tokens for s in samples]
        mask = feats["attention_mask"].bool()
        captured: dict[str, torch.Tensor] = {}  # name -> (B, L, D) float32 on CPU (or (B, L, L, C) raw)

        lm_hidden = None
        if req.esmc or req.run_trunk:
            lm_hidden = self.model._compute_lm_hidden_states(
                feats["input_ids"], feats["asym_id"], feats["residue_index"], feats["mol_type"], mask
            )  # (B, L, layers + 1, D): special tokens already removed, per chain for complexes
            for i in req.esmc:
                captured[f"esmc.{i}"] = lm_hidden[:, :, i].float().cpu()
        scores: list[dict[str, float]] = [{} for _ in samples]
        coords = None
        if req.run_trunk:
            trunk = self._run_trunk(feats, lm_hidden, lengths, mask, req, captured)
            del lm_hidden
            if req.run_diffusion and trunk is not None:
                coords = self._run_diffusion(feats, trunk, samples, mask, req, captured)
                if req.run_confidence:
                    self._run_confidence(feats, trunk, coords, samples, mask, req, captured, scores)
                else:
                    coords = None  # the sampler stopped at the last step whose features were asked for

        out = []
        s_count = self.opts.diffusion_samples
        for b, s in enumerate(samples):
            n = s.num_tokens
            tokens: dict[str, np.ndarray] = {}
            for ref in req.refs:
                t = captured.get(ref.name)
                if t is None and not self.hooks_enabled:
                    continue  # overhead measurement: the stages ran, nothing was captured
                if t is None:
                    raise RuntimeError(f"layer {ref.name} was not produced by the run")  # a bug, not user error
                if ref.raw:
                    tokens[ref.name] = t[b, :n, :n].reshape(n * n, -1).numpy()
                else:
                    tokens[ref.name] = t[b, :n].numpy()
            structure = None
            if coords is not None:
                structure = {
                    "coords": coords.view(len(samples), s_count, *coords.shape[1:])[b, :, : s.num_atoms].cpu().numpy(),
                    "plddt": captured["_plddt_tokens"][b, :, :n].numpy(),
                    "ptm": captured["_ptm"][b].numpy(),
                }
            out.append((tokens, scores[b], structure))
        return out

    def _store(self, captured, name, tensor, mask, req, is_pair):
        """Reduce (pair) and keep a captured tensor as float32 on the CPU."""
        if is_pair:
            captured[name] = stages.reduce_pair(tensor, mask, self.opts.pair_reduction).cpu()
            if name in req.raw:
                captured[name + stages.RAW_SUFFIX] = tensor.float().cpu()
        else:
            captured[name] = tensor.float().cpu()

    def _init_pair_state(self, lengths):
        """The trunk's initial pair state, seeded per sample at its own length (SmallInit std, as the port)."""
        seed = self.opts.seed

        def init(reference: torch.Tensor) -> torch.Tensor:
            c = reference.shape[-1]
            std = math.sqrt(2.0 / (5.0 * c))
            state = torch.zeros(reference.shape, dtype=torch.float32)
            for b, n in enumerate(lengths):
                g = torch.Generator().manual_seed(seed)
                block = torch.empty(n, n, c)
                torch.nn.init.trunc_normal_(block, mean=0.0, std=std, a=-3 * std, b=3 * std, generator=g)
                state[b, :n, :n] = block
            return state.to(device=reference.device, dtype=reference.dtype)

        return init

    def _run_trunk(self, feats, lm_hidden, lengths, mask, req: _Request, captured):
        from transformers.models.esmfold2.modeling_esmfold2 import EsmFold2AtomInputs

        model = self.model
        handles = self._trunk_hooks(req, mask, captured) if self.hooks_enabled and req.trunk else []
        restore = []
        p = self.lm_dropout_p
        lm_config = self.config.lm_encoder
        released_p = lm_config.lm_dropout
        if p > 0:
            handles.append(model.lm_encoder.register_forward_pre_hook(self._seeded_lm_dropout(lengths, p)))
        # Same input in every loop (the MSA encoder always; the LM encoder without dropout):
        # compute once, reuse (bit-identical).
        for module in (model.msa_encoder,) + ((model.lm_encoder,) if p == 0 else ()):
            if module is not None:
                restore.append(_compute_once_per_input(module))
        model._init_pair_state = self._init_pair_state(lengths)
        atom_inputs = EsmFold2AtomInputs(**{k: feats[k] for k in (
            "ref_pos", "ref_charge", "atom_attention_mask", "ref_element", "ref_atom_name_chars", "ref_space_uid", "atom_to_token")})
        kwargs = {k: feats[k] for k in ("token_index", "residue_index", "asym_id", "sym_id", "entity_id", "mol_type",
                                        "res_type", "token_bonds", "deletion_mean")}
        if model.msa_encoder is not None:
            kwargs.update({k: feats[k] for k in ("msa", "has_deletion", "deletion_value", "msa_attention_mask")})
        try:
            lm_config.lm_dropout = 0.0  # the seeded hook above replaces the port's draw; restored below
            trunk = model(attention_mask=mask, atom_inputs=atom_inputs, lm_hidden_states=lm_hidden,
                          num_loops=self.num_loops, **kwargs)
        except _StopRun:
            trunk = None
        finally:
            lm_config.lm_dropout = released_p
            for h in handles:
                h.remove()
            for undo in restore:
                undo()
            del model._init_pair_state
        return trunk

    def _seeded_lm_dropout(self, lengths, p: float):
        """Forward pre-hook of the LM encoder applying the seeded dropout to its input in every loop.

        The port's own draw (F.dropout on the global generator) is replaced by this one, applied
        exactly where the port applies it."""
        lm_loop = {"loop": -1}

        def drop(m, args):
            lm_loop["loop"] += 1
            return (apply_lm_dropout(args[0], lengths, p, self.opts.seed, lm_loop["loop"]),) + tuple(args[1:])

        return drop

    def _trunk_hooks(self, req: _Request, mask, captured) -> list:
        """Forward hooks keeping the trunk layers asked for; their handles, in registration order.

        Without diffusion to run, the forward stops (_StopRun) once every layer asked for is kept."""
        model = self.model
        pending = set(req.trunk)
        last_loop = self.num_loops  # loops are 0..num_loops
        state = {"loop": -1}
        handles = []
        stop_early = not req.run_diffusion

        def keep(name, tensor, is_pair):
            if name in pending:
                self._store(captured, name, tensor, mask, req, is_pair)
                pending.discard(name)
                if stop_early and not pending:
                    raise _StopRun

        def add(module, fn, pre=False):
            handles.append(module.register_forward_pre_hook(fn) if pre else module.register_forward_hook(fn))

        def embedder_hook(m, a, o):  # a hook's non-None return would replace the output: return None
            keep("input_embedder.single", o[0], False)
            keep("input_embedder.pair", o[1], True)

        add(model.input_embedder, embedder_hook)
        add(model.language_model, lambda m, a, o: keep("language_model", o, True))
        if model.msa_encoder is not None:
            for i, layer in enumerate(model.msa_encoder.layers):
                add(layer, lambda m, a, o, i=i: keep(f"msa_encoder.{i}", o[1], True))
        for i, layer in enumerate(model.lm_encoder.layers):
            add(layer, lambda m, a, o, i=i: keep(f"lm_encoder.{i}", o, True))

        def count_loop(m, a):
            state["loop"] += 1

        add(model.folding_trunk, count_loop, pre=True)
        kept = self.layout.kept_loops
        for i, layer in enumerate(model.folding_trunk.layers):
            def trunk_hook(m, a, o, i=i):
                j = state["loop"]
                if kept is None:
                    if j == last_loop:
                        keep(f"folding_trunk.{i}", o, True)
                elif j in kept:
                    keep(f"folding_trunk.loop{j}.{i}", o, True)
            add(layer, trunk_hook)
        add(model.parcae.output_stack, lambda m, a, o: keep("parcae", o, True))
        add(model.distogram_head, lambda m, a: keep("distogram", a[0], True), pre=True)
        return handles

    def _sample_generators(self, samples: list[Featurized]) -> list[torch.Generator]:
        """One generator per (sample, diffusion sample): seeded by ``seed`` and the diffusion-sample
        number only, so a protein gets the same noise whatever else is in its batch."""
        s_count = self.opts.diffusion_samples
        return [torch.Generator().manual_seed(self.opts.seed * 1_000_003 + s) for _ in samples for s in range(s_count)]

    def _run_diffusion(self, feats, trunk, samples, mask, req: _Request, captured):
        denoiser = self.model.structure_head
        s_count = self.opts.diffusion_samples
        step = {"step": -1}  # the denoising step running now, read by the hooks
        handles = []
        if self.hooks_enabled and req.diffusion:
            handles = self._diffusion_hooks(req, mask, len(samples), step, captured)
        try:
            conditioning = denoiser.prepare_conditioning(
                atom_inputs=trunk.atom_inputs, pair_trunk=trunk.pair_states,
                relative_position_encoding=trunk.relative_position_encoding, single_inputs=trunk.single_inputs,
                attention_mask=mask, num_diffusion_samples=s_count,
            )
            return self._denoise(trunk, samples, conditioning, self._last_diffusion_step(req), step)
        finally:
            for h in handles:
                h.remove()

    def _diffusion_hooks(self, req: _Request, mask, b_count: int, step: dict, captured) -> list:
        """Forward hooks keeping the diffusion layers asked for (per-step parts at the steps kept,
        averaged over the diffusion samples of each protein); their handles."""
        denoiser = self.model.structure_head
        s_count = self.opts.diffusion_samples
        batch = b_count * s_count
        kept = self.layout.kept_steps
        final = self.layout.diffusion_steps - 1

        def keep(part, tensor, per_step, is_pair=False):
            if per_step:
                k = step["step"]
                if kept is None:
                    if k != final:
                        return
                    name = f"diffusion.{part}"
                elif k in kept:
                    name = f"diffusion.step{k}.{part}"
                else:
                    return
            else:
                name = f"diffusion.{part}"
            if name not in req.diffusion:
                return
            if tensor.shape[0] == batch and s_count > 1:  # average the diffusion samples of each protein
                tensor = tensor.float().view(b_count, s_count, *tensor.shape[1:]).mean(1)
            self._store(captured, name, tensor, mask, req, is_pair)

        cond = denoiser.conditioning
        return [
            cond.pair_transition_1.register_forward_hook(lambda m, a, o: keep("conditioning.pair", o, False, True)),
            cond.register_forward_hook(lambda m, a, o: keep("single", o, True)),
            denoiser.atom_encoder.register_forward_hook(lambda m, a, o: keep("atom_encoder", o[0], True)),
        ] + [
            layer.register_forward_hook(lambda m, a, o, i=i: keep(f"token_transformer.{i}", o, True))
            for i, layer in enumerate(denoiser.token_transformer.layers)
        ]

    def _last_diffusion_step(self, req: _Request) -> int:
        """The last denoising step to run: all of them when the structure is needed (confidence),
        else the last step a layer is asked at (-1: none)."""
        final = self.layout.diffusion_steps - 1
        if req.run_confidence:
            return final
        asked = [cast(stages.LayerRef, stages.parse_layer(n)) for n in req.diffusion]  # names plan() parsed
        per_step = [r for r in asked if r.part != "conditioning.pair"]
        return max((final if r.step is None else r.step) for r in per_step) if per_step else -1

    def _denoise(self, trunk, samples: list[Featurized], conditioning, last_step: int, step: dict):
        """The port's sampler, seeded per sample, up to ``last_step``; the final coordinates."""
        from transformers.models.esmfold2.generation_esmfold2 import _weighted_rigid_align

        model = self.model
        denoiser = model.structure_head
        s_count = self.opts.diffusion_samples
        batch = len(samples) * s_count
        schedule, gammas = model._build_noise_schedule(self.opts.diffusion_steps, self.device)
        head = self.config.structure_head
        gens = self._sample_generators(samples)
        num_atoms = trunk.atom_inputs.atom_to_token.shape[1]
        real_atoms = [s.num_atoms for s in samples for _ in range(s_count)]
        atom_mask = trunk.atom_inputs.atom_attention_mask.repeat_interleave(s_count, 0).float()

        def noise(shape_last: int = 3):
            out = torch.zeros(batch, num_atoms, shape_last)
            for r, (g, a) in enumerate(zip(gens, real_atoms)):
                out[r, :a] = torch.randn(a, shape_last, generator=g)
            return out.to(self.device)

        coords = float(schedule[0]) * noise()
        prev = None
        for k, (sigma_prev, sigma_next, gamma) in enumerate(zip(schedule[:-1], schedule[1:], gammas[1:])):
            if k > last_step:
                break
            step["step"] = k
            rot, shift = self._random_rigid(gens)
            coords, prev = _center_rotate_shift(coords, atom_mask, prev, rot, shift)
            sp = float(sigma_prev)
            level = sp * (1.0 + float(gamma))
            churn = head.noise_scale * max(level**2 - sp**2, 0.0) ** 0.5
            noisy = coords + churn * noise() if churn > 0 else coords
            denoised = denoiser(noisy_coords=noisy, noise_level=torch.full((batch,), level, device=self.device),
                                conditioning=conditioning)
            noisy = _weighted_rigid_align(noisy, denoised, atom_mask, atom_mask)
            coords = noisy + head.step_scale * (float(sigma_next) - level) * (noisy - denoised) / level
            prev = denoised
        return coords

    def _random_rigid(self, gens):
        """A uniform random rotation (unit quaternion) and a unit-normal translation per generator."""
        rots, shifts = [], []
        for g in gens:
            q = torch.randn(4, generator=g)
            q = q / q.norm()
            r, i, j, k = q.tolist()
            rots.append(torch.tensor([
                [1 - 2 * (j * j + k * k), 2 * (i * j - k * r), 2 * (i * k + j * r)],
                [2 * (i * j + k * r), 1 - 2 * (i * i + k * k), 2 * (j * k - i * r)],
                [2 * (i * k - j * r), 2 * (j * k + i * r), 1 - 2 * (i * i + j * j)],
            ]))
            shifts.append(torch.randn(1, 3, generator=g))
        return torch.stack(rots).to(self.device), torch.stack(shifts).to(self.device)

    def _run_confidence(self, feats, trunk, coords, samples, mask, req: _Request, captured, scores):
        model = self.model
        head = model.confidence_head
        s_count = self.opts.diffusion_samples
        b_count = len(samples)
        batch = b_count * s_count
        handles = []

        def keep(name, tensor, is_pair):
            if name not in req.confidence:
                return
            if tensor.shape[0] == batch and s_count > 1:
                tensor = tensor.float().view(b_count, s_count, *tensor.shape[1:]).mean(1)
            self._store(captured, name, tensor, mask, req, is_pair)

        if self.hooks_enabled and req.confidence:
            handles.append(head.input_embedder.register_forward_hook(lambda m, a, o: keep("confidence.input", o, True)))
            # The heads read stack input + stack output (the head adds its input back after the
            # residual stack), so block i is captured as input + block i's output: for the last
            # block, exactly the pair tensor the pLDDT / PAE / PDE heads and the pooling read.
            stack_in: dict[str, torch.Tensor] = {}
            handles.append(head.folding_trunk.register_forward_pre_hook(lambda m, a: stack_in.__setitem__("pair", a[0])))
            for i, layer in enumerate(head.folding_trunk.layers):
                handles.append(layer.register_forward_hook(
                    lambda m, a, o, i=i: keep(f"confidence.pair.{i}", stack_in["pair"].float() + o.float(), True)))
            handles.append(head.row_attention_pooling.register_forward_hook(lambda m, a, o: keep("confidence.single", o, False)))
        try:
            conf = head(
                single_inputs=trunk.single_inputs, pair_states=trunk.pair_states, predicted_coords=coords,
                distogram_atom_idx=feats["distogram_atom_idx"], attention_mask=mask,
                atom_to_token=trunk.atom_inputs.atom_to_token, atom_attention_mask=trunk.atom_inputs.atom_attention_mask,
                asym_id=feats["asym_id"], mol_type=feats["mol_type"], num_diffusion_samples=s_count,
                relative_position_encoding=trunk.relative_position_encoding, token_bonds_encoding=trunk.token_bonds_encoding,
            )
        finally:
            for h in handles:
                h.remove()
        plddt = conf["plddt"].float().view(b_count, s_count, -1).cpu()
        ptm = conf["ptm"].float().view(b_count, s_count).cpu()
        iptm = conf["iptm"].float().view(b_count, s_count).cpu()
        captured["_plddt_tokens"], captured["_ptm"] = plddt, ptm
        for b, s in enumerate(samples):
            n = s.num_tokens
            scores[b]["plddt"] = float(plddt[b, :, :n].mean())
            scores[b]["ptm"] = float(ptm[b].mean())
            if len(s.chain_lengths) > 1:
                scores[b]["iptm"] = float(iptm[b].mean())
            if s_count > 1:
                scores[b]["ptm_best"] = float(ptm[b].max())


def _compute_once_per_input(module) -> Callable[[], None]:
    """Make ``module`` return its cached output when called again with the very same input objects.

    Returns the function that undoes it. Keeps references to the inputs so their ids stay unique.
    """
    original = module.forward
    cache: dict[str, Any] = {}

    def forward(*args, **kwargs):
        key = tuple(id(a) for a in args) + tuple((k, id(v)) for k, v in sorted(kwargs.items()))
        if cache.get("key") == key:
            return cache["out"]
        out = original(*args, **kwargs)
        cache.update(key=key, out=out, inputs=(args, kwargs))
        return out

    module.forward = forward

    def undo():
        del module.forward
        cache.clear()

    return undo


def _center_rotate_shift(coords, atom_mask, second, rotations, shifts):
    """Centre on the masked centroid, rotate and translate (AF3 Algorithm 19); ``second`` rides along."""
    m = atom_mask.unsqueeze(-1)
    centroid = (coords * m).sum(dim=1, keepdim=True) / m.sum(dim=1, keepdim=True).clamp(min=1)
    coords = (coords - centroid) @ rotations + shifts
    if second is not None:
        second = (second - centroid) @ rotations + shifts
    return coords, second
