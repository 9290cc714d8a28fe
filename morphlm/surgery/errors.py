"""The one error type of model surgery (index maps, layer maps, unit selection/duplication).

Growth (:class:`morphlm.grow.errors.GrowthError`) and compression
(:class:`morphlm.compress.errors.CompressionError`) subclass it, so ``except SurgeryError`` catches both and
``except GrowthError`` / ``except CompressionError`` keep working. Code below the verbs raises whatever error
class its caller passes (``error=``), in the caller's words (source/target or teacher/student).
"""


class SurgeryError(ValueError):
    """A surgery request that cannot be carried out; the message says why and what to do."""
