"""Errors that reach the user as one line: what is wrong and what to do."""


class RepalignError(ValueError):
    """Bad input or an unusable resource. The message is one line naming the problem and the fix."""


class InvalidInput(RepalignError):
    """One input sample cannot be processed (bad residue, unsupported element, too long, ...).

    ``sample_id`` names the offending sample so ``--skip-invalid`` can report it.
    """

    def __init__(self, message: str, sample_id: str | None = None):
        super().__init__(message)
        self.sample_id = sample_id


class ModelUnavailable(RepalignError):
    """A model's package or weights are not installed here."""
