"""HeadScope: look inside the attention heads of causal language models."""

__version__ = "0.1.0"
