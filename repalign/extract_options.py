"""What an extraction is asked to do, and what it will do for each model, before any weights load.

- :class:`ExtractOptions`: the run-wide settings of ``extract``, ``plan_extraction`` and
  ``extract_distributed`` (the flags of ``repalign extract``), validated when built.
- :class:`ModelPlan`: one model's adapter (built, not loaded), its resolved layers, pooling and
  token layers, and the inputs it accepts; made by :func:`plan_model`, consumed by
  :func:`repalign.extract.extract_model` in one process or on Dask workers.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fnmatch
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from repalign.errors import InvalidInput, RepalignError
from repalign.inputs import Record
from repalign.models import ModelAdapter, get_adapter, options_for_model
from repalign.models.controls import control_name, parse_control
from repalign.pooling import POOLINGS as VECTOR_POOLINGS

#: per-sample poolings (repalign.pooling), and "none": token features only
POOLINGS = VECTOR_POOLINGS + ("none",)
STORE_DTYPES = ("float32", "float16")
#: --compression of new models (None: gzip in a new cache, the cache's own in an existing one)
COMPRESSIONS = ("gzip", "lzf", "none")


@dataclass(frozen=True)
class ExtractOptions:
    """Run-wide settings of an extraction (one per ``repalign extract`` flag).

    layers: names or shell patterns (``all`` for every layer; None: the model's default layers).
    pool: ``mean``, ``max`` or ``last`` over residues/atoms, ``cls``, or ``none`` (token features
        only); None: the model's default (:mod:`repalign.pooling`).
    tokens: layers (names or patterns) whose per-residue / per-atom features are also stored (ragged).
    device, dtype: where and in which precision the model runs; store_dtype: float32 or float16 on disk.
    compression: gzip, lzf or none for new models; None: gzip in a new cache, else the cache's own.
    batch_tokens: padded tokens (residues / atoms) per batch. limit: the first N inputs only.
    overwrite: replace a stored model's samples. skip_invalid: leave out (and report) inputs a
        model cannot take, instead of stopping. weights: a checkpoint for the (single) model.
    options: model-specific options, recorded in the provenance: ``KEY`` applies to every model
        that accepts it (an error only if none does), ``MODEL:KEY`` to that model alone
        (:mod:`repalign.options`).
    quiet: no progress line. adapter_factory: builds an adapter from a model name (default
        :func:`repalign.models.get_adapter`).
    """

    layers: Sequence[str] | None = None
    pool: str | None = None
    tokens: Sequence[str] = ()
    device: str = "cpu"
    dtype: str = "float32"
    store_dtype: str = "float32"
    compression: str | None = None
    batch_tokens: int = 4096
    limit: int | None = None
    overwrite: bool = False
    skip_invalid: bool = False
    weights: str | None = None
    options: Mapping[str, Any] | None = None
    quiet: bool = False
    adapter_factory: Callable[..., ModelAdapter] = get_adapter

    def __post_init__(self):
        batch = self.batch_tokens
        if isinstance(batch, bool) or not isinstance(batch, (int, np.integer)) or batch < 1:
            raise RepalignError(f"batch_tokens={batch!r} must be a positive whole number of tokens, e.g. 4096")
        if self.pool is not None and self.pool not in POOLINGS:
            raise RepalignError(f"unknown pooling {self.pool!r}; use one of {', '.join(POOLINGS)}")
        if self.store_dtype not in STORE_DTYPES:
            raise RepalignError(f"unknown storage dtype {self.store_dtype!r}; use float32 or float16")
        if self.compression is not None and self.compression not in COMPRESSIONS:
            raise RepalignError(f"unknown compression {self.compression!r}; use gzip, lzf or none")
        if self.limit is not None and self.limit < 1:
            raise RepalignError(f"limit={self.limit!r} must be a positive number of inputs")

    @classmethod
    def build(cls, settings: ExtractOptions | None = None, **fields: Any) -> ExtractOptions:
        """``settings`` (default: all defaults) with ``fields`` replaced; an unknown field name is an error."""
        if settings is not None and not isinstance(settings, ExtractOptions):
            raise RepalignError(f"settings must be an ExtractOptions, got {type(settings).__name__}; "
                                "or give the options by name (layers=..., pool=...)")
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = [name for name in fields if name not in known]
        if unknown:
            raise RepalignError(f"unknown extraction option {unknown[0]!r}; the options are {', '.join(known)}")
        return dataclasses.replace(settings or cls(), **fields)


@dataclass
class ModelPlan:
    """One model of an extraction, resolved and validated; nothing loaded or written yet.

    key: the model's name in the cache (:func:`model_key`). records: the inputs it accepts, in
    input order; invalid: id -> reason for those left out (with ``skip_invalid``).
    """

    key: str
    adapter: ModelAdapter
    layers: list[str]
    pool: str
    token_layers: list[str]
    records: list[Record]
    invalid: dict[str, str] = field(default_factory=dict)

    @property
    def pooled_layers(self) -> list[str]:
        """The layers stored as one vector per sample (none with pooling ``none``)."""
        return [] if self.pool == "none" else list(self.layers)


def check_records(records: Sequence[Record], models: Sequence[str], options: ExtractOptions) -> list[Record]:
    """Validate the inputs of a run against its settings; returns the records after ``limit``."""
    if not records:
        raise RepalignError("no input samples; give a FASTA, CSV or structure file with at least one sample")
    records = list(records)
    if options.limit is not None:
        records = records[:options.limit]
    if options.weights is not None and len(models) > 1:
        raise RepalignError(f"weights={options.weights} applies to one model; extract each model with its own weights, "
                            "one model per run")
    for r in records:
        if "\x00" in r.id:
            raise RepalignError(f"sample id {r.id!r} contains a NUL character; remove it from the input")
    return records


def dataset_provenance(records) -> dict | None:
    """The provenance of a :class:`repalign.datasets.dataset.Dataset` (builder, seed, size, content
    hash), stored under ``dataset`` in each model's provenance; None for a plain list of records."""
    describe = getattr(records, "provenance", None)
    return describe() if callable(describe) else None


def resolve_layers(adapter: ModelAdapter, requested: Sequence[str] | None) -> list[str]:
    """``None`` -> the adapter's defaults; ``all`` -> every layer; names or shell patterns otherwise."""
    available = adapter.layer_names()
    if not requested:
        return list(adapter.default_layers())
    if list(requested) == ["all"]:
        return list(available)
    chosen: set[str] = set()
    for pat in requested:
        hits = [n for n in available if fnmatch.fnmatchcase(n, pat)]
        if not hits:
            shown = ", ".join(available[:10]) + (", ..." if len(available) > 10 else "")
            raise RepalignError(
                f"model {adapter.info.name} has no layer matching {pat!r}; its layers: {shown} "
                "(all of them: repalign.zoo.model_table())"
            )
        chosen.update(hits)
    return [n for n in available if n in chosen]


def plan_model(name: str, records: Sequence[Record], options: ExtractOptions) -> ModelPlan:
    """Build one model's adapter, resolve its layers and pooling, and validate every input.

    Raises on the first invalid record unless ``options.skip_invalid``. Nothing is loaded or written here.
    """
    adapter = options.adapter_factory(name, weights=options.weights, device=options.device, dtype=options.dtype,
                                      **options_for_model(name, options.options))
    with weight_errors(adapter):  # some adapters load their checkpoint to list its layers
        chosen = resolve_layers(adapter, options.layers)
    pool = options.pool or adapter.default_pooling
    token_layers = chosen if pool == "none" else (resolve_layers(adapter, options.tokens) if options.tokens else [])
    unknown_tok = [t for t in token_layers if t not in chosen]
    if unknown_tok:
        raise RepalignError(f"tokens={unknown_tok} are not among the extracted layers; add them to layers=")
    good, invalid = [], {}
    for r in records:
        try:
            adapter.validate(r)
            if adapter.max_size is not None and adapter.size(r) > adapter.max_size:
                raise InvalidInput(
                    f"{r.id}: {adapter.size(r)} tokens/atoms, longer than {adapter.info.name} accepts "
                    f"({adapter.max_size}); shorten it, split it, or pass skip_invalid=True", r.id)
        except InvalidInput as exc:
            if not options.skip_invalid:
                raise
            invalid[r.id] = str(exc)
        else:
            good.append(r)
    return ModelPlan(model_key(adapter), adapter, list(chosen), pool, list(token_layers), good, invalid)


def split_stored(records: Sequence[Record], stored: dict[str, str], key: str) -> tuple[list[Record], int]:
    """Records still to extract, and how many are already stored with the same content hash.

    A stored id whose hash differs is an error: the input changed under the same id.
    """
    todo, skipped = [], 0
    for r in records:
        old = stored.get(r.id)
        if old is None:
            todo.append(r)
        elif old == r.content_hash:
            skipped += 1
        else:
            raise RepalignError(
                f"sample {r.id} is already stored for {key} with different content; "
                f"give the new input another id, or pass overwrite=True to re-extract the model")
    return todo, skipped


def adapter_name(adapter: ModelAdapter) -> str:
    """The name the adapter was created with (``hf:PATH`` keeps its full path)."""
    return getattr(adapter, "name", None) or adapter.info.name


def model_key(adapter: ModelAdapter) -> str:
    """The model's name in the cache: its registered name; ``hf:`` checkpoints by folder or repo name,
    and a control ``NAME@random:SEED`` as its model's key with the same suffix (``hf:tiny@random:0``)."""
    return name_key(adapter_name(adapter))


def name_key(name: str) -> str:
    """:func:`model_key` of a model name."""
    control = parse_control(name)
    if control is not None:
        return control_name(name_key(control.base), control.seed, control.scope)
    if name.startswith("hf:"):
        source = name[3:].rstrip("/")
        # cache group names cannot hold '/': a local folder is named by its last part, a repo id keeps its owner
        base = os.path.basename(source) if os.path.isdir(os.path.expanduser(source)) else source.replace("/", "--")
        name = "hf:" + base
    return name


@contextlib.contextmanager
def weight_errors(adapter: ModelAdapter):
    """Turn the errors of loading a damaged checkpoint into one RepalignError naming it."""
    try:
        yield
    except RepalignError:
        raise
    except Exception as exc:  # torch, safetensors and transformers raise many types for a bad file
        where = f" from {adapter.weights}" if getattr(adapter, "weights", None) else ""
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise RepalignError(
            f"cannot load the weights of model {adapter.info.name}{where} ({type(exc).__name__}: {text[:200]}); "
            "the checkpoint is incomplete or not this model's: download it again or pass another checkpoint as weights="
        ) from exc
