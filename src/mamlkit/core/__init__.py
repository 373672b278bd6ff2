"""mamlkit.core."""
