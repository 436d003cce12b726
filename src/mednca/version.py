"""The package version, kept in one place (read by pyproject and written into checkpoints)."""

__version__ = "0.1.0"

#: Checkpoint format version. Bump when the saved layout changes incompatibly.
CHECKPOINT_FORMAT = 1
