"""mamlkit.rl."""
