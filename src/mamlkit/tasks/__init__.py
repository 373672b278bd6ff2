"""mamlkit.tasks."""
