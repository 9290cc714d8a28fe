"""The error type of the growth verbs."""

from ..surgery.errors import SurgeryError


class GrowthError(SurgeryError):
    """A growth request that cannot be carried out; the message says why and what to do (a ValueError)."""
