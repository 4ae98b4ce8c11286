"""Models (actor.py: the HF causal LM and its log-probs) and losses (loss.py, torch only)."""
