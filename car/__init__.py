"""car (codex-autorunner): run a coding agent in a loop over a repo's TODO list."""

__version__ = "0.1.0"
