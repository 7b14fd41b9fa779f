"""Pipeline factories, compilation, local runner and submission."""
