"""The `moodwatch` command line: `app` is the console entry point."""

from workers.cli.main import app

__all__ = ["app"]
