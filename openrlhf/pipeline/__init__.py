"""Algorithm 1 end to end (python -m openrlhf.cli.distill)."""
