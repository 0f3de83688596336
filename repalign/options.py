"""Model options given on the command line (``--option``), plain or scoped to one model.

``KEY=VALUE`` applies to every model of the run that accepts ``KEY`` (adapters declare theirs in
``ModelAdapter.OPTIONS``) and is an error only when none does; ``MODEL:KEY=VALUE`` applies to
``MODEL`` alone (``--option iglm:single_chain=heavy``), and an option ``MODEL`` does not take is an
error. The model part is everything before the last ``:``, so ``hf:`` names work too
(``hf:/ckpt/esm2:KEY=VALUE``).

These are the routing rules over declared option names; the registry (:mod:`repalign.models`)
applies them with each adapter's ``OPTIONS`` (``options_for_model``, ``check_options``).
"""

from __future__ import annotations

from typing import Any, Mapping

from repalign.errors import RepalignError


def split_key(key: str) -> tuple[str | None, str]:
    """``"iglm:single_chain"`` -> ("iglm", "single_chain"); ``"loops"`` -> (None, "loops")."""
    model, sep, name = key.rpartition(":")
    return (model.strip().lower(), name.strip()) if sep else (None, key.strip())


def route_options(model: str, options: Mapping[str, Any] | None, accepted: tuple[str, ...] | None) -> dict[str, Any]:
    """The options that reach ``model``: its scoped ones, and the plain ones in ``accepted`` (all
    plain ones when ``accepted`` is None: the adapter rejects those it does not take). A scoped
    value wins over a plain one; other models' scoped entries are dropped."""
    me = model.strip().lower()
    plain: dict[str, Any] = {}
    scoped: dict[str, Any] = {}
    for key, value in (options or {}).items():
        owner, name = split_key(key)
        if owner is None:
            if accepted is None or name in accepted:
                plain[name] = value
        elif owner == me:
            scoped[name] = value
    return {**plain, **scoped}


def check_routing(options: Mapping[str, Any] | None, accepted: Mapping[str, tuple[str, ...] | None]) -> None:
    """RepalignError when a scoped option names a model not in ``accepted`` (model -> the option names
    it takes, None: undeclared), or no model takes a plain one."""
    if not options:
        return
    models = list(accepted)
    names = {m.strip().lower() for m in models}
    for key in options:
        owner, name = split_key(key)
        if not name:
            raise RepalignError(f"options key {key!r} has no option name; write MODEL:KEY or KEY")
        if owner is not None:
            if owner not in names:
                raise RepalignError(
                    f"options key {key!r}: model {owner!r} is not in this run ({', '.join(models)}); "
                    "write MODEL:KEY with one of those models"
                )
        elif not any(a is None or name in a for a in accepted.values()):
            # every a is a tuple here (a None, any option taken, would have made any() true): the filter drops nothing
            takes = "; ".join(f"{m}: {', '.join(a) or 'none'}" for m, a in accepted.items() if a is not None)
            raise RepalignError(f"no model of this run takes option {name!r} (options taken: {takes}); check the name")
