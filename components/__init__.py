"""clinflow pipeline stages: one KFP component per sub-package."""
