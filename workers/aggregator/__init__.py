"""The aggregator service: channel mood windows, spike detection, alert outputs.

`faust -A workers.aggregator worker` finds the faust app here; it is built on first access, so
importing the detection or the settings does not build (or import) faust.
"""

from typing import Any


def __getattr__(name: str) -> Any:
    if name == "app":
        from workers.aggregator.app import app

        # That import bound this package's `app` to the submodule `app`; faust's CLI looks `app` up
        # more than once, so the faust app has to replace it.
        globals()["app"] = app
        return app
    raise AttributeError(name)
