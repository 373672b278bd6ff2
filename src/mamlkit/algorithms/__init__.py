"""mamlkit.algorithms."""
