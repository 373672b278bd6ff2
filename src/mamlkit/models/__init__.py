"""mamlkit.models."""
