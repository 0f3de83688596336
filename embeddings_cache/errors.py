"""Errors of the store. Each message is one line naming the problem and the fix.

:class:`Error` is the root of every error the project raises on purpose: the store's own errors
derive from it, and ``repalign.errors.RepalignError`` is this same class under the toolkit's name,
so one ``except`` catches the store's and the toolkit's errors alike. It lives here, in the lower
layer, because ``except`` matches by class inheritance only (abstract-base registration is ignored),
and the store must not import the toolkit built on it.
"""


class Error(ValueError):
    """Base of every error raised by the store and by tools built on it: bad input or an unusable
    resource, described in one line with the fix.

    It derives from ValueError so code that caught ValueError for bad input keeps doing so.
    """


class CacheError(Error):
    """A cache cannot be read or written as asked. The message is one line with the fix."""
