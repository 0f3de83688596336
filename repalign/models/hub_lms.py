"""Short names for common hub protein language models: ``esm2-8m`` ... ``esm2-3b`` and ``prott5``.

Each is an :class:`~repalign.models.hf_protein_lm.HFProteinLM` bound to one hub repository, loaded
offline from the user's Hugging Face cache exactly like ``hf:REPO`` (fetch it once with
``hf download REPO`` on a machine with network), or from a local folder given as ``--weights``. The
layer list is known without loading the weights, and a checkpoint whose depth differs from the
named model is refused.

Layer names: ``embeddings`` (hidden_states[0]) then ``layer.0`` ... ``layer.{N-1}``; the last one is
the model's output after its final layer norm.

ESM-2 (``EsmModel``): each chain is tokenised as ``<cls> residues <eos>``; ``<cls>``, ``<eos>`` and
padding are removed before pooling; ``cls`` pooling takes the ``<cls>`` vector.

ProtT5 (``Rostlab/prot_t5_xl_half_uniref50-enc``, the encoder half of ProtT5-XL-UniRef50 in
float16, run here in the compute dtype asked for): only the T5 encoder is built
(``T5EncoderModel``), as ProtTrans recommends for embeddings. Residues are space-separated and the
rare amino acids U, Z, O, B are mapped to X before tokenising, as in ProtTrans; the trailing
``</s>`` and padding are removed before pooling. T5 has no CLS token, so ``cls`` pooling is not
available (``last`` takes the last residue). Its tokenizer is a SentencePiece model: loading the
real checkpoint may need ``pip install sentencepiece``.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar

from repalign.errors import ModelUnavailable
from repalign.models._sequence import quiet_transformers, torch_dtype
from repalign.models.base import ModelInfo
from repalign.models.hf_protein_lm import HFProteinLM

_RARE = re.compile(r"[UZOB]")


class HubProteinLM(HFProteinLM):
    """A registered short name for one hub checkpoint; subclasses set ``info``, ``repo`` and ``n_layers``."""

    repo: ClassVar[str]
    n_layers: ClassVar[int]

    def __init__(self, weights: str | None = None, device: str = "cpu", dtype: str = "float32", **options: Any):
        super().__init__(self.repo, weights=weights, device=device, dtype=dtype, **options)
        self.name = self.info.name

    def layer_names(self) -> list[str]:
        return ["embeddings"] + [f"layer.{i}" for i in range(self.n_layers)]

    def load(self) -> None:
        super().load()
        if self._n_layers != self.n_layers:
            raise ModelUnavailable(
                f"model {self.name}: the checkpoint {self._source()} has {self._n_layers} layers, {self.name} has "
                f"{self.n_layers}; it is another model: use hf:{self._source()} for it"
            )

    def provenance(self) -> dict[str, Any]:
        prov = super().provenance()
        prov["repo"] = self.repo
        return prov


def _esm2(name: str, repo: str, layers: int, dim: int, params: str) -> type[HubProteinLM]:
    info = ModelInfo(
        name=name, family="ESM-2", modality="protein sequence", input_kind="sequence", extra="models",
        license="MIT (ESM-2 weights)",
        weights=f"{repo} from the Hugging Face cache (hf download {repo}) or --weights DIR",
        description=f"ESM-2 {params} ({layers} layers x {dim}), via transformers EsmModel",
    )
    return type(f"ESM2_{params}", (HubProteinLM,), {"info": info, "repo": repo, "n_layers": layers,
                                                    "__module__": __name__})


ESM2_8M = _esm2("esm2-8m", "facebook/esm2_t6_8M_UR50D", 6, 320, "8M")
ESM2_35M = _esm2("esm2-35m", "facebook/esm2_t12_35M_UR50D", 12, 480, "35M")
ESM2_150M = _esm2("esm2-150m", "facebook/esm2_t30_150M_UR50D", 30, 640, "150M")
ESM2_650M = _esm2("esm2-650m", "facebook/esm2_t33_650M_UR50D", 33, 1280, "650M")
ESM2_3B = _esm2("esm2-3b", "facebook/esm2_t36_3B_UR50D", 36, 2560, "3B")


class ProtT5(HubProteinLM):
    """ProtT5-XL-UniRef50, encoder only (see the module docstring)."""

    info = ModelInfo(
        name="prott5", family="ProtT5", modality="protein sequence", input_kind="sequence", extra="models",
        license="MIT (ProtTrans)",
        weights="Rostlab/prot_t5_xl_half_uniref50-enc from the Hugging Face cache "
        "(hf download Rostlab/prot_t5_xl_half_uniref50-enc) or --weights DIR",
        description="ProtT5-XL-UniRef50 encoder (24 layers x 1024), via transformers T5EncoderModel",
    )
    repo = "Rostlab/prot_t5_xl_half_uniref50-enc"
    n_layers = 24

    def _from_pretrained(self, transformers, src: str, kwargs: dict):
        with quiet_transformers():
            tokenizer = transformers.AutoTokenizer.from_pretrained(src, **kwargs)
            model = transformers.T5EncoderModel.from_pretrained(src, dtype=torch_dtype(self.dtype), **kwargs)
        return model, tokenizer

    def load(self) -> None:
        super().load()
        # SentencePiece pieces are "▁A": the residue alphabet is the letters after the word marker;
        # the rare amino acids are accepted and sent as X
        letters = {t.lstrip("▁") for t in self._tokenizer.get_vocab()}
        self._alphabet = {t for t in letters if len(t) == 1 and t.isalpha() and t.isupper()}
        if "X" in self._alphabet:
            self._alphabet |= set("UZOB")

    def _encode_chain(self, chain: str):
        return super()._encode_chain(_RARE.sub("X", chain))
