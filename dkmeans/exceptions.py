"""Exceptions that dkmeans raises on purpose."""

from __future__ import annotations


class InvalidParameterError(ValueError, TypeError):
    """A parameter has a wrong type or a value out of its range.

    Both a ``ValueError`` and a ``TypeError``, as scikit-learn's own
    ``InvalidParameterError`` is, so that ``except ValueError`` and
    ``except TypeError`` both catch it, whichever kind of mistake it was.
    """
