"""The network and its pieces: embedding layers, sharing modes, encoders, heads and the losses."""

# The registered components that live in their own modules register themselves on import.
from mtrec.nn import encoders  # noqa: F401
