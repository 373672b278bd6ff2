"""mamlkit.text."""
