"""The aggregator service: channel mood windows, spike detection, alert outputs.

`faust -A workers.aggregator worker` finds the faust app here; it is built on first access, so
importing the detection or the settings does not build (or import) faust.
"""

from typing import Any


def __getattr__(name: str) -> Any:
    if name == "app":
        from workers.aggregator.app import app

        return app
    raise AttributeError(name)
