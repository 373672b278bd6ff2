"""mamlkit.datasets."""
