"""Errors that reach the user as one line: what is wrong and what to do.

``RepalignError`` is the root error of the store, ``embeddings_cache.errors.Error``, under the
toolkit's name: the store cannot import the toolkit, and ``except`` matches by inheritance only, so
the root class lives in the lower layer. ``except RepalignError`` therefore catches cache errors
(``embeddings_cache.CacheError``) as well as the toolkit's own.
"""

from embeddings_cache.errors import CacheError
from embeddings_cache.errors import Error as RepalignError

__all__ = ["RepalignError", "RepalignWarning", "CacheError", "InvalidInput", "ModelUnavailable"]


class InvalidInput(RepalignError):
    """One input sample cannot be processed (bad residue, unsupported element, too long, ...).

    ``sample_id`` names the offending sample so ``--skip-invalid`` can report it.
    """

    def __init__(self, message: str, sample_id: str | None = None):
        super().__init__(message)
        self.sample_id = sample_id


class ModelUnavailable(RepalignError):
    """A model's package or weights are not installed here."""


class RepalignWarning(UserWarning):
    """A result that ran but cannot be fully trusted (N small for k, a degenerate layer, too few
    permutations, ...): issued with :func:`warnings.warn`, so notebooks show it and
    ``warnings.filterwarnings("ignore", category=RepalignWarning)`` silences it; the command line
    shows each once as ``repalign: warning: ...``."""
