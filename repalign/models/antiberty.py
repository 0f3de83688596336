"""AntiBERTy: a BERT antibody language model (8 layers x 512), as registered model ``antiberty``.

Weights: the ``AntiBERTy_md_smooth`` checkpoint shipped in the wheel of ``antiberty==0.1.3`` (the
1.0 releases download it from a hub instead). Because one environment cannot hold two versions of
the ``antiberty`` distribution and IgFold needs ``antiberty>=1.0``, the 0.1.3 weights are unpacked
into a project-managed folder by::

    python -m repalign.models.antiberty install-weights [--wheel antiberty-0.1.3-py3-none-any.whl]

which downloads the wheel with ``pip download --no-deps`` (or takes a wheel already on disk),
checks the sha256 of the weights and writes ``{sys.prefix}/share/repalign/antiberty-0.1.3/``.
The weights folder is looked up in this order: the ``weights=`` argument, ``$ANTIBERTY_WEIGHTS_DIR``
(the variable the antiberty package itself reads), that project folder, then an installed
``antiberty`` package that still ships ``trained_models/AntiBERTy_md_smooth``.

The model is loaded with ``transformers.BertModel`` and tokenised here, one token per residue, from
the checkpoint's ``vocab.txt`` (``[PAD] [UNK] [CLS] [SEP] [MASK]`` then the 20 amino acids): under
transformers 5 ``BertTokenizer`` maps every residue of an unspaced sequence to ``[UNK]``.

Layer names, in model order: ``embeddings`` (hidden_states[0]: word + position + token-type
embeddings after LayerNorm), then ``layer.0`` ... ``layer.7`` (the outputs of the 8 encoder layers).

Heavy/light pairs: AntiBERTy was trained on single chains, so each chain of a ``HEAVY:LIGHT`` record
runs as its own sequence (``[CLS] chain [SEP]``) and the per-residue rows are concatenated in input
order (heavy then light) with ``[CLS]``/``[SEP]``/``[PAD]`` removed. ``cls`` is the ``[CLS]`` vector,
averaged over the two chains of a pair.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Sequence, cast

from repalign.errors import ModelUnavailable, RepalignError
from repalign.inputs import Record
from repalign.models._common import (
    missing_modules,
    provenance_record,
    sha256_of_file,
    sha256_of_files,
)
from repalign.models._sequence import (
    STANDARD_AMINO_ACIDS,
    assemble,
    chain_rows,
    chains_of,
    check_device_dtype,
    check_sequence_record,
    quiet_transformers,
    run_padded,
    start_forward,
    torch_dtype,
)
from repalign.models.base import ModelAdapter, ModelInfo, SampleFeatures
from repalign.packages import package_dir

WEIGHTS_VERSION = "0.1.3"
CHECKPOINT_NAME = "AntiBERTy_md_smooth"
WEIGHTS_ENV = "ANTIBERTY_WEIGHTS_DIR"
# sha256 of pytorch_model.bin in the antiberty-0.1.3 wheel: install-weights refuses anything else
WEIGHTS_SHA256 = "f1ae33eac8cc8784a7d4be5a600141d2fa7bc7d8d5b3f5324d64a6a63bd0f137"
# the vocab.txt of the 0.1.3 wheel, used when a weights folder comes without one
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *STANDARD_AMINO_ACIDS]
MAX_CHAIN_LENGTH = 510  # 512 positions less [CLS] and [SEP]
INSTALL_HINT = "pip install 'repalign[zoo]' && python -m repalign.models.antiberty install-weights"


def default_weights_root() -> Path:
    """Project-managed folder holding the unpacked antiberty-0.1.3 ``trained_models``."""
    return Path(sys.prefix) / "share" / "repalign" / f"antiberty-{WEIGHTS_VERSION}"


def _is_checkpoint(path: Path) -> bool:
    return (path / "config.json").is_file() and any(
        (path / name).is_file() for name in ("pytorch_model.bin", "model.safetensors")
    )


def find_weights_dir(explicit: str | None = None) -> Path | None:
    """The AntiBERTy checkpoint folder (see the module docstring for the order), or None."""
    if explicit:
        return Path(explicit).expanduser()
    env = os.environ.get(WEIGHTS_ENV)
    if env:
        return Path(env).expanduser()
    candidates = [default_weights_root() / CHECKPOINT_NAME]
    try:
        root = package_dir("antiberty")
        if root is not None:
            candidates.append(root / "trained_models" / CHECKPOINT_NAME)
    except (ImportError, ValueError):
        pass
    return next((c for c in candidates if _is_checkpoint(c)), None)


def read_vocab(weights_dir: Path) -> list[str]:
    """Tokens of ``vocab.txt`` next to (or one level above) the checkpoint, else the 0.1.3 vocabulary."""
    for candidate in (weights_dir / "vocab.txt", weights_dir.parent / "vocab.txt"):
        if candidate.is_file():
            return [line.strip() for line in candidate.read_text().splitlines() if line.strip()]
    return list(VOCAB)


def _sha256(path: Path) -> str | None:
    return sha256_of_file(path) if path.is_file() else None


def install_weights(wheel: str | None = None, dest: str | None = None, force: bool = False) -> Path:
    """Unpack the antiberty-0.1.3 ``trained_models`` into ``dest`` (default :func:`default_weights_root`).

    wheel: a local ``antiberty-0.1.3-py3-none-any.whl``; when None it is fetched with
    ``pip download --no-deps antiberty==0.1.3``. The weights' sha256 is checked before anything is
    written, and the folder is swapped in whole, so a failed install leaves no partial folder.
    An existing install with the right sha256 is kept unless ``force``.
    """
    root = Path(dest) if dest else default_weights_root()
    if not force and (root / "vocab.txt").is_file() and _sha256(root / CHECKPOINT_NAME / "pytorch_model.bin") == WEIGHTS_SHA256:
        return root
    with tempfile.TemporaryDirectory() as tmp:
        if wheel is None:
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                   f"antiberty=={WEIGHTS_VERSION}", "-d", tmp]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            wheels = sorted(Path(tmp).glob("antiberty-*.whl"))
            if proc.returncode != 0 or not wheels:
                last = (proc.stderr.strip().splitlines() or ["no wheel"])[-1]
                raise RepalignError(f"pip download antiberty=={WEIGHTS_VERSION} failed ({last}); download the wheel and pass --wheel")
            wheel = str(wheels[0])
        root.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=root.parent, prefix=".antiberty-"))  # same filesystem: rename works
        staging.chmod(0o755)
        try:
            with zipfile.ZipFile(wheel) as zf:
                prefix = "antiberty/trained_models/"
                members = [m for m in zf.namelist() if m.startswith(prefix) and not m.endswith("/")]
                if not members:
                    raise RepalignError(f"{wheel}: no antiberty/trained_models inside; give the antiberty-{WEIGHTS_VERSION} wheel")
                for member in members:
                    target = staging / member[len(prefix):]
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with zf.open(member) as src, open(target, "wb") as out:
                        shutil.copyfileobj(src, out)
            digest = _sha256(staging / CHECKPOINT_NAME / "pytorch_model.bin")
            if digest != WEIGHTS_SHA256:
                raise RepalignError(f"{wheel}: AntiBERTy weights sha256 {digest} != expected {WEIGHTS_SHA256}; "
                                    f"use the antiberty-{WEIGHTS_VERSION} wheel from PyPI")
            if root.exists():
                shutil.rmtree(root)
            os.replace(staging, root)
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
    return root


class AntiBERTyEncoder:
    """The AntiBERTy BERT (transformers ``BertModel``) and its one-token-per-residue tokeniser."""

    def __init__(self, weights_dir: Path, device: str, dtype: str):
        import transformers

        if not _is_checkpoint(weights_dir):
            raise ModelUnavailable(
                f"model antiberty: no AntiBERTy checkpoint (config.json + pytorch_model.bin) in {weights_dir}; run: {INSTALL_HINT}"
            )
        self.weights_dir = weights_dir
        self.vocab = read_vocab(weights_dir)
        self.token_id = {t: i for i, t in enumerate(self.vocab)}
        missing = [t for t in ("[PAD]", "[CLS]", "[SEP]", *STANDARD_AMINO_ACIDS) if t not in self.token_id]
        if missing:
            raise ModelUnavailable(f"model antiberty: vocab.txt in {weights_dir} lacks {missing}; reinstall with: {INSTALL_HINT}")
        with quiet_transformers():
            # a (model, loading info) pair: transformers' annotation omits the output_loading_info form
            model, info = cast(Any, transformers.BertModel.from_pretrained(
                str(weights_dir), add_pooling_layer=False, dtype=torch_dtype(dtype), output_loading_info=True
            ))
        if info.get("missing_keys"):
            raise ModelUnavailable(f"model antiberty: checkpoint {weights_dir} lacks {sorted(info['missing_keys'])[:3]}; reinstall with: {INSTALL_HINT}")
        self.model = model.to(device).eval()
        self.device = device

    def encode(self, chain: str) -> list[int]:
        return [self.token_id["[CLS]"], *(self.token_id[r] for r in chain), self.token_id["[SEP]"]]

    def run(self, chains: Sequence[str], **kwargs):
        """One padded forward pass over ``chains``; returns (model output, attention mask)."""
        return run_padded(self.model, [self.encode(c) for c in chains], self.token_id["[PAD]"], self.device, **kwargs)

    def files(self) -> list[Path]:
        return [p for p in self.weights_dir.iterdir() if p.name in {"config.json", "pytorch_model.bin", "model.safetensors"}]


class AntiBERTy(ModelAdapter):
    """AntiBERTy per-residue features; see the module docstring."""
    WEIGHTS_LAYOUT = ("config.json", "pytorch_model.bin")

    info = ModelInfo(
        name="antiberty",
        family="AntiBERTy",
        modality="antibody sequence",
        input_kind="sequence",
        extra="zoo",
        license="MIT (antiberty 0.1.3 code and weights; see its LICENSE.MD)",
        weights=f"AntiBERTy_md_smooth from the antiberty-{WEIGHTS_VERSION} wheel on PyPI; install with: {INSTALL_HINT}",
        description="BERT antibody language model, 8 layers x 512, trained on 558M OAS sequences (Ruffolo et al. 2021)",
    )
    default_pooling = "mean"
    max_size = 2 * MAX_CHAIN_LENGTH

    OPTIONS = ()

    def __init__(self, weights: str | None = None, device: str = "cpu", dtype: str = "float32", **options: Any):
        check_device_dtype(device, dtype)
        super().__init__(weights=weights, device=device, dtype=dtype, **options)
        self._encoder: AntiBERTyEncoder | None = None

    @classmethod
    def unavailable_reason(cls) -> str | None:
        missing = missing_modules("torch", "transformers")
        if missing:
            return f"needs {' and '.join(missing)} (the 'zoo' extra): pip install 'repalign[zoo]'"
        if find_weights_dir() is None:
            return f"AntiBERTy {WEIGHTS_VERSION} weights not installed; run: {INSTALL_HINT}"
        return None

    def load(self) -> None:
        missing = missing_modules("torch", "transformers")
        if missing:
            raise ModelUnavailable(f"model antiberty: needs {' and '.join(missing)}: pip install 'repalign[zoo]'")
        weights_dir = find_weights_dir(self.weights)
        if weights_dir is None:
            raise ModelUnavailable(f"model antiberty: AntiBERTy {WEIGHTS_VERSION} weights not installed; run: {INSTALL_HINT}")
        self._encoder = AntiBERTyEncoder(weights_dir, self.device, self.dtype)

    def layer_names(self) -> list[str]:
        return ["embeddings"] + [f"layer.{i}" for i in range(8)]

    def provenance(self) -> dict[str, Any]:
        self.ensure_loaded()
        assert self._encoder is not None  # set by load()
        weights = {
            "weights": f"antiberty-{WEIGHTS_VERSION}/{CHECKPOINT_NAME}",
            "weights_dir": str(self._encoder.weights_dir),
            "weights_sha256": sha256_of_files(self._encoder.files()),
        }
        return provenance_record(
            self,
            weights,
            ("torch", "transformers", "repalign"),
            notes={"chains": "each chain run alone, rows concatenated in input order"},
        )

    def validate(self, record: Record) -> None:
        check_sequence_record(
            record, "antiberty", STANDARD_AMINO_ACIDS, MAX_CHAIN_LENGTH, chains=(1, 2), chain_hint=" (one chain, or HEAVY:LIGHT)"
        )

    def forward(self, records: Sequence[Record], layers: Sequence[str]) -> list[SampleFeatures]:
        index = start_forward(self, records, layers, "antiberty")
        if not records:
            return []
        chains, owner = chains_of(records)
        assert self._encoder is not None  # start_forward loaded it
        out, _ = self._encoder.run(chains, output_hidden_states=True)
        # drop [CLS], [SEP] and padding; the [CLS] row is the cls vector
        per_tokens, per_cls = chain_rows(
            out.hidden_states, index, [slice(1, 1 + len(chain)) for chain in chains], [0] * len(chains)
        )
        return assemble(len(records), owner, per_tokens, per_cls, list(index))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m repalign.models.antiberty", description="AntiBERTy weights")
    sub = parser.add_subparsers(dest="command", required=True)
    inst = sub.add_parser("install-weights", help=f"unpack the antiberty-{WEIGHTS_VERSION} weights for repalign")
    inst.add_argument("--wheel", help=f"a local antiberty-{WEIGHTS_VERSION} wheel (default: pip download it)")
    inst.add_argument("--dest", help=f"target folder (default: {default_weights_root()}); "
                      f"elsewhere, set {WEIGHTS_ENV}=DEST/{CHECKPOINT_NAME}")
    inst.add_argument("--force", action="store_true", help="reinstall even when the weights are already there")
    args = parser.parse_args(argv)
    try:
        root = install_weights(args.wheel, args.dest, force=args.force)
    except RepalignError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(root / CHECKPOINT_NAME)
    return 0


if __name__ == "__main__":
    sys.exit(main())
