"""sluicegate: a self-hostable streaming gateway for foundation models."""

__version__ = "0.1.0"
