"""Render the README's settings tables from the settings classes (`python -m workers.cli.settings_doc`).

One table per shared part (``workers/common/settings.py``) and one per service for the fields it
adds; a service's full set is its own table plus the parts it names.
"""

from __future__ import annotations

from pathlib import Path

from pydantic_settings import BaseSettings

from workers.aggregator.settings import AggregatorSettings
from workers.analyzer.settings import AnalyzerSettings
from workers.common.settings import (
    PROJECT_ROOT,
    ElasticsearchSettings,
    EventTimeSettings,
    ImageSettings,
    KafkaSettings,
    LocalImageSettings,
    ModelSettings,
    MoodwatchSettings,
    ObservabilitySettings,
    TritonSettings,
)
from workers.dashboard.settings import DashboardSettings

PARTS: list[type[MoodwatchSettings]] = [
    KafkaSettings,
    ElasticsearchSettings,
    LocalImageSettings,
    ImageSettings,
    EventTimeSettings,
    ModelSettings,
    TritonSettings,
    ObservabilitySettings,
]
SERVICES: list[type[MoodwatchSettings]] = [AnalyzerSettings, AggregatorSettings, DashboardSettings]


def own_fields(cls: type[BaseSettings]) -> list[str]:
    """The fields a class declares itself (not those of the parts it inherits)."""
    return [name for name in cls.__annotations__ if name in cls.model_fields]


def settings_table(cls: type[BaseSettings]) -> str:
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for name in own_fields(cls):
        field = cls.model_fields[name]
        default = field.default
        if isinstance(default, Path):
            default = str(default).replace(str(PROJECT_ROOT), "<repo>")
        default = "" if default is None else f"`{default}`"
        rows.append(f"| `MOODWATCH_{name.upper()}` | {default} | {field.description or ''} |")
    return "\n".join(rows)


def all_settings_classes() -> list[type[MoodwatchSettings]]:
    return SERVICES


def parts_of(cls: type[BaseSettings]) -> list[str]:
    return [part.__name__ for part in PARTS if issubclass(cls, part) and part is not cls]


def markdown() -> str:
    out = []
    for cls in PARTS:
        out.append(f"#### {cls.__name__} (`workers/common/settings.py`)\n\n{settings_table(cls)}\n")
    for cls in SERVICES:
        module = cls.__module__.replace(".", "/") + ".py"
        parts = ", ".join(parts_of(cls))
        out.append(f"#### {cls.__name__} (`{module}`): {parts}, and\n\n{settings_table(cls)}\n")
    return "\n".join(out)


if __name__ == "__main__":
    print(markdown())
