"""Model options given on the command line (``--option``), plain or scoped to one model.

``KEY=VALUE`` applies to every model of the run that accepts ``KEY`` (adapters declare theirs in
``ModelAdapter.OPTIONS``) and is an error only when none does; ``MODEL:KEY=VALUE`` applies to
``MODEL`` alone (``--option iglm:single_chain=heavy``), and an option ``MODEL`` does not take is an
error. The model part is everything before the last ``:``, so ``hf:`` names work too
(``hf:/ckpt/esm2:KEY=VALUE``).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from repalign.errors import RepalignError


def split_key(key: str) -> tuple[str | None, str]:
    """``"iglm:single_chain"`` -> ("iglm", "single_chain"); ``"loops"`` -> (None, "loops")."""
    model, sep, name = key.rpartition(":")
    return (model.strip().lower(), name.strip()) if sep else (None, key.strip())


def accepted_options(model: str) -> tuple[str, ...] | None:
    """The option names a model's adapter declares; None when it declares none (it gets them all)."""
    from repalign.models import get_adapter_class  # lazy: circular (repalign.models imports this module)

    return get_adapter_class(model).option_names()


def resolve_scoped(model: str, options: Mapping[str, Any] | None) -> dict[str, Any]:
    """``options`` with the scoped entries resolved for ``model``: ``MODEL:KEY`` becomes ``KEY``, other
    models' entries are dropped, plain entries are kept (the adapter rejects those it does not take).
    A scoped value wins over a plain one."""
    me = model.strip().lower()
    plain, scoped = {}, {}
    for key, value in (options or {}).items():
        owner, name = split_key(key)
        if owner is None:
            plain[name] = value
        elif owner == me:
            scoped[name] = value
    return {**plain, **scoped}


def options_for_model(model: str, options: Mapping[str, Any] | None) -> dict[str, Any]:
    """The options that reach ``model``: its scoped ones, and the plain ones its adapter accepts."""
    if not options:
        return {}
    me = model.strip().lower()
    accepted = accepted_options(model)
    out: dict[str, Any] = {}
    scoped: dict[str, Any] = {}
    for key, value in options.items():
        owner, name = split_key(key)
        if owner is None:
            if accepted is None or name in accepted:
                out[name] = value
        elif owner == me:
            scoped[name] = value
    out.update(scoped)  # a scoped value wins over a plain one
    return out


def check_options(options: Mapping[str, Any] | None, models: Sequence[str]) -> None:
    """RepalignError when a scoped option names a model not in the run, or no model takes a plain one."""
    if not options:
        return
    names = {m.strip().lower(): m for m in models}
    accepted = {m: accepted_options(m) for m in models}
    for key in options:
        owner, name = split_key(key)
        if not name:
            raise RepalignError(f"--option {key!r} has no option name; write MODEL:KEY=VALUE or KEY=VALUE")
        if owner is not None:
            if owner not in names:
                raise RepalignError(
                    f"--option {key}=...: model {owner!r} is not in this run ({', '.join(models)}); "
                    "write MODEL:KEY=VALUE with one of those models"
                )
        elif not any(a is None or name in a for a in accepted.values()):
            # every a is a tuple here (a None, any option taken, would have made any() true): the filter drops nothing
            takes = "; ".join(f"{m}: {', '.join(a) or 'none'}" for m, a in accepted.items() if a is not None)
            raise RepalignError(f"no model of this run takes option {name!r} (options taken: {takes}); check the name")
