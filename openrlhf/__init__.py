"""openrlhf daDPO fork: distil a teacher chat model into a small student with daDPO."""

__version__ = "0.1.0"
