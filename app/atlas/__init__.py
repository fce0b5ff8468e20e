"""The static atlas of a corpus job: every head's page as files that open from disk (python -m app atlas)."""
