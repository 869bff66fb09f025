"""keygate: one endpoint in front of many LLM provider keys."""

__version__ = "0.1.0"
