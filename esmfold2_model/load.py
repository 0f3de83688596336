"""Offline-first loading of ESMFold2 and ESMC checkpoints; dtype and device.

``weights`` is a local checkpoint directory (as written by ``save_pretrained``) or a hub id that is
already in the user's Hugging Face cache. Nothing is downloaded here: a checkpoint that is not on
disk is a one-line :class:`~repalign.errors.ModelUnavailable` giving the command that fetches it
(``hf download biohub/ESMFold2``), so a multi-GB download never starts behind the user's back.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

from repalign.errors import ModelUnavailable, RepalignError
from repalign.models import hub_cache_dir

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def resolve_checkpoint(weights: str | os.PathLike | None, default_repo: str) -> Path:
    """The local directory holding the checkpoint: ``weights`` itself when it is a directory, else
    the snapshot of the hub id (``weights`` or ``default_repo``) in the local cache."""
    if weights is not None and Path(weights).expanduser().is_dir():
        path = Path(weights).expanduser()
        if not (path / "config.json").is_file():
            raise ModelUnavailable(f"{path}: no config.json; point weights= at a checkpoint saved with save_pretrained")
        return path
    repo = str(weights) if weights is not None else default_repo
    if not _REPO_ID.match(repo):
        raise ModelUnavailable(f"weights {repo!r}: no such directory and not a hub id (owner/name); check the path")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    cache = hub_cache_dir()
    try:
        path = Path(snapshot_download(repo, cache_dir=cache, local_files_only=True))
    except (LocalEntryNotFoundError, FileNotFoundError, OSError):
        raise ModelUnavailable(
            f"checkpoint {repo} is not in the local Hugging Face cache ({cache}); fetch it with: hf download {repo}"
        ) from None
    if not (path / "config.json").is_file():
        raise ModelUnavailable(f"checkpoint {repo} in {cache} is incomplete; fetch it again with: hf download {repo}")
    return path


def torch_dtype_for(device: str, dtype: str):
    """float32 everywhere; bfloat16 only on a GPU (the CPU bf16 path of the port is not usable)."""
    import torch

    if dtype not in ("float32", "bfloat16"):
        raise RepalignError(f"ESMFold2 runs in float32 or bfloat16, not {dtype!r}; pass dtype='float32' (CPU) or dtype='bfloat16' (GPU)")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise RepalignError(f"unknown device {device!r}; use e.g. 'cpu' or 'cuda'") from None
    if dtype == "bfloat16" and dev.type == "cpu":
        raise RepalignError("bfloat16 ESMFold2 runs only on a GPU; pass dtype='float32' on the CPU")
    return torch.float32 if dtype == "float32" else torch.bfloat16


def load_esmfold2(path: Path, device: str = "cpu", dtype: str = "float32"):
    """EsmFold2Model from a checkpoint directory, in eval mode on ``device``, its config as released.

    The released config keeps the language-model dropout on at inference (``lm_encoder.lm_dropout =
    0.25``, ``per_loop_lm_dropout = True``); the extractor applies it with seeded masks, or not at
    all with ``lm_dropout=off`` (see :mod:`esmfold2_model.extractor`). The config is not changed here.
    """
    from transformers.models.esmfold2 import EsmFold2Model

    torch_dtype = torch_dtype_for(device, dtype)
    check_weight_files(path)
    try:
        model = EsmFold2Model.from_pretrained(str(path), dtype=torch_dtype)
    except (OSError, ValueError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelUnavailable(f"{path}: cannot load as an ESMFold2 checkpoint ({first}); check the weights directory") from None
    return model.to(device).eval()  # type: ignore[arg-type]  # transformers' @wraps'd .to() loses its self binding for mypy


def check_weight_files(path: Path) -> None:
    """Refuse a checkpoint whose ``*.safetensors`` files are truncated or damaged, before loading.

    A safetensors file is an 8-byte little-endian header length, a JSON header giving each tensor's
    byte range, then the data: the file must be exactly ``8 + header + largest end offset`` bytes.
    Reads only the headers (kilobytes), so a half-finished download is caught before any model work.
    """
    import json

    files = sorted(Path(path).glob("*.safetensors"))
    index = Path(path) / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (ValueError, KeyError, TypeError):
            raise ModelUnavailable(f"{index}: unreadable shard index; download the checkpoint again") from None
        missing = [s for s in shards if not (Path(path) / s).is_file()]
        if missing:
            raise ModelUnavailable(f"{path}: shard {missing[0]} listed in model.safetensors.index.json is missing; "
                                   f"download the checkpoint again")
    for f in files:
        size = f.stat().st_size
        n, header = _safetensors_header(f)
        end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
        if size != 8 + n + end:
            raise ModelUnavailable(f"{f}: truncated or damaged safetensors file ({size} bytes, its header describes "
                                   f"{8 + n + end}); download it again")


def _safetensors_header(f: Path) -> tuple[int, dict]:
    """(header length, header) of a safetensors file; ModelUnavailable naming it when unreadable."""
    import json
    import struct

    size = f.stat().st_size
    try:
        with open(f, "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            if n > size:
                raise ValueError("header longer than the file")
            header = json.loads(fh.read(n))
        for k, v in header.items():
            if k != "__metadata__":
                int(v["data_offsets"][1]), list(v["shape"])
    except (struct.error, ValueError, KeyError, TypeError, IndexError, AttributeError):
        raise ModelUnavailable(f"{f}: not a readable safetensors file (damaged header); download it again") from None
    return n, header


def parameter_count(path: Path, prefix: str = "") -> int:
    """Parameters stored in the checkpoint's safetensors files (from their headers, no data read),
    counting only tensor names starting with ``prefix``."""
    total = 0
    for f in sorted(Path(path).glob("*.safetensors")):
        _, header = _safetensors_header(f)
        for k, v in header.items():
            if k != "__metadata__" and k.startswith(prefix):
                total += math.prod(int(d) for d in v["shape"])
    return total


def load_esmc(path: Path, device: str = "cpu", dtype: str = "float32"):
    """EsmcModel (the ESMC backbone alone) from a checkpoint directory, in eval mode on ``device``."""
    from transformers.models.esmc import EsmcModel

    torch_dtype = torch_dtype_for(device, dtype)
    check_weight_files(path)
    try:
        model = EsmcModel.from_pretrained(str(path), dtype=torch_dtype)
    except (OSError, ValueError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelUnavailable(f"{path}: cannot load as an ESMC checkpoint ({first}); check the weights directory") from None
    return model.to(device).eval()  # type: ignore[arg-type]  # transformers' @wraps'd .to() loses its self binding for mypy


def load_config(path: Path):
    """The checkpoint's config alone (cheap: no weights), for layer names before loading."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(str(path))
    except (OSError, ValueError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelUnavailable(f"{path}: unreadable config.json ({first}); check the weights directory") from None
