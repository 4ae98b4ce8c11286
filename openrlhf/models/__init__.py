"""Models and losses. Kept light: submodules import what they need."""
