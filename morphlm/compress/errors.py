"""The one error type of the compression verbs (a ValueError, so the CLI prints it as a clear one-liner)."""

import dataclasses

from ..surgery.errors import SurgeryError


class CompressionError(SurgeryError):
    """Bad input to a compression verb: the message names the problem and the fix."""


class StrictConfig:
    """Mixin for the compression option dataclasses: ``to_dict`` / ``from_dict``, where an unknown field is a
    :class:`CompressionError` that lists the known ones (a recipe typo never passes silently)."""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)  # type: ignore[arg-type]

    @classmethod
    def from_dict(cls, data: dict):
        known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(data) - known)
        if unknown:
            raise CompressionError(f"unknown {cls.__name__} field(s) {unknown}; known: {sorted(known)}")
        return cls(**data)
