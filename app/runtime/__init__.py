"""Runtime: distribution strategy, multi-worker workarounds, safe loading, the terminal."""
