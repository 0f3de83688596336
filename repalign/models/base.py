"""The model adapter interface: what every model family declares so the pipeline can run it.

An adapter is one small class in its own module under ``repalign.models``. It says what input it
takes, its layer names in model order, how big each input is (for length-bucketed batching) and how
to run a batch. The extraction pipeline (``repalign.extract``) does batching, pooling, resuming and
writing; adapters never touch the cache.

Contract of :meth:`ModelAdapter.forward`: given a list of records (validated with
:meth:`ModelAdapter.validate`) and the requested layer names, return one :class:`SampleFeatures`
per record, in order. ``tokens[layer]`` is the per-residue / per-atom matrix ``(L_i, D)`` of that
sample with padding and special tokens (BOS/EOS/CLS) already removed, so the features of a sample
do not depend on what else was in its batch. Pooling (mean over tokens, or the ``cls`` vector where
the adapter provides one) is done by the pipeline from these.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping, Sequence

import numpy as np

from repalign.errors import InvalidInput, RepalignError
from repalign.inputs import Record

MODALITIES = ("antibody sequence", "protein sequence", "protein structure", "crystal", "molecule")


@dataclass(frozen=True)
class ModelInfo:
    """Static facts about a model, shown by ``repalign models``."""

    name: str  # registered name, lower case, as users type it
    family: str  # e.g. "AntiBERTy", "CHGNet"
    modality: str  # one of MODALITIES
    input_kind: str  # "sequence" or "structure": which records it accepts
    extra: str  # pip extra that installs it: pip install 'repalign[EXTRA]'
    license: str
    weights: str  # where the weights come from and how to get them
    description: str = ""


@dataclass
class SampleFeatures:
    """What a model produced for one sample.

    tokens:  layer -> (L, D) float array, one row per residue / atom (special tokens removed).
    cls:     layer -> (D,) vector for layers where a CLS / global readout means something.
    outputs: per-sample scalar predictions (e.g. energy, pLDDT, pTM), stored next to the features.
    """

    tokens: dict[str, np.ndarray] = field(default_factory=dict)
    cls: dict[str, np.ndarray] = field(default_factory=dict)
    outputs: dict[str, float] = field(default_factory=dict)


def reject_unknown_options(model: str, options: Mapping[str, Any], known: Sequence[str] = ()) -> None:
    """RepalignError naming the options a model does not take and the ones it does."""
    unknown = sorted(set(options) - set(known))
    if unknown:
        valid = ", ".join(known) if known else "none"
        raise RepalignError(f"model {model}: unknown option(s) {', '.join(unknown)}; valid options: {valid}")


class ModelAdapter(abc.ABC):
    """Base class of every model family. Subclasses set ``info`` and implement the abstract methods."""

    info: ClassVar[ModelInfo]
    #: pooling used when the user does not choose: "mean" (over tokens) or "cls"
    default_pooling: ClassVar[str] = "mean"
    #: largest input size (tokens or atoms) the model accepts; None for no limit
    max_size: ClassVar[int | None] = None
    #: names of the options (``--option KEY=VALUE``) the adapter takes, checked on construction;
    #: None: not declared, so every plain option reaches it and the adapter checks them itself
    OPTIONS: ClassVar[tuple[str, ...] | None] = None
    #: what a ``weights=`` path must hold (checked by ``repalign models --weights`` without loading):
    #: "checkpoint" (a folder with config.json and a weights file, as save_pretrained writes it), "file"
    #: (one checkpoint file), or the names that must be inside the folder
    WEIGHTS_LAYOUT: ClassVar[str | tuple[str, ...]] = "checkpoint"

    def __init__(self, weights: str | None = None, device: str = "cpu", dtype: str = "float32", **options: Any):
        """weights: a local directory/file (or hub id resolved offline) overriding the default weights.
        options: model-specific extraction options (``--option KEY=VALUE``), validated by the adapter
        and recorded in the provenance, so a changed option is detected on resume."""
        declared = self.option_names()
        if declared is not None:
            reject_unknown_options(self.info.name, options, declared)
        self.weights = weights
        self.device = device
        self.dtype = dtype
        self.options = dict(options)
        self._loaded = False

    # ---- availability and loading -------------------------------------------------------------
    @classmethod
    def unavailable_reason(cls) -> str | None:
        """None when the model can run here, else a one-line reason with the fix (install the extra)."""
        return None

    @abc.abstractmethod
    def load(self) -> None:
        """Load weights (offline) onto ``self.device``. Raise ModelUnavailable with the fix if missing."""

    def ensure_loaded(self) -> None:
        if not self._loaded:
            self.load()
            self._loaded = True

    @classmethod
    def option_names(cls) -> tuple[str, ...] | None:
        """The options this adapter takes (``OPTIONS``); None when it does not declare them."""
        return cls.OPTIONS

    # ---- description ----------------------------------------------------------------------------
    @abc.abstractmethod
    def layer_names(self) -> list[str]:
        """Every layer this model can expose, in model order (input side first)."""

    def default_layers(self) -> list[str]:
        """Layers extracted when the user does not pass ``--layers``."""
        return self.layer_names()

    def input_layers(self) -> list[str]:
        """The layers that are the network's input embeddings (per-token or per-element vectors
        before any learned mixing, which a random-initialised network shares with the trained one
        through the inputs alone): the first layer of a network with several; none for a baseline
        (hand-crafted descriptors). Stored in the provenance; ``compare``'s ``hidden`` layer family
        leaves them out of the best-pair search."""
        names = self.layer_names()
        return names[:1] if len(names) > 1 and self.info.family != "baseline" else []

    def pretrained_inputs(self) -> dict[str, str]:
        """The separately pretrained models this model runs as its input featuriser (e.g. a language
        model whose embeddings it takes as input, itself registered as a model), which its random-init
        control ``NAME@random:SEED`` keeps trained (``NAME@random-all:SEED`` re-initialises them too):
        their name (as the provenance records it) -> the attribute of this adapter that holds them once
        loaded (a torch module, or an object holding one). Known before loading, since the cache's
        options record them. By default none: a control re-initialises every weight."""
        return {}

    def provenance(self) -> dict[str, Any]:
        """Model version, weights identifier/hash and package versions, stored in the cache."""
        return {"model": self.info.name, "family": self.info.family, "options": dict(self.options)}

    # ---- inputs ---------------------------------------------------------------------------------
    def validate(self, record: Record) -> None:
        """Raise InvalidInput (naming ``record.id``) when this model cannot take the record."""
        if record.kind != self.info.input_kind:
            raise InvalidInput(
                f"{record.id}: model {self.info.name} takes {self.info.input_kind} inputs, got a {record.kind}; "
                f"pass {self.info.input_kind} files for this model",
                record.id,
            )

    def size(self, record: Record) -> int:
        """Tokens (residues) or atoms of a record: the unit of the batch budget."""
        return record.size

    # ---- running --------------------------------------------------------------------------------
    @abc.abstractmethod
    def forward(self, records: Sequence[Record], layers: Sequence[str]) -> list[SampleFeatures]:
        """Run one batch; see the module docstring for the contract."""
