"""The deidentify stage."""
