"""The version of sm_tracing."""

__version__ = "0.1.0.dev0"
