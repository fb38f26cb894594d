"""Render the settings tables of the README from the settings classes (`python -m workers.common.settings_doc`)."""

from __future__ import annotations

from pathlib import Path

from pydantic_settings import BaseSettings

from workers.common.settings import PROJECT_ROOT, Settings


def settings_table(cls: type[BaseSettings]) -> str:
    rows = []
    for name, field in cls.model_fields.items():
        default = field.default
        if isinstance(default, Path):
            default = str(default).replace(str(PROJECT_ROOT), "<repo>")
        default = "" if default is None else f"`{default}`"
        rows.append(f"| `MOODWATCH_{name.upper()}` | {default} | {field.description or ''} |")
    return "\n".join(rows)


def all_settings_classes() -> list[type[BaseSettings]]:
    classes: list[type[BaseSettings]] = [Settings]
    try:
        from workers.aggregator.settings import AggregatorSettings

        classes.append(AggregatorSettings)
    except ImportError:
        pass
    return classes


if __name__ == "__main__":
    for cls in all_settings_classes():
        print(f"## {cls.__name__}\n")
        print(settings_table(cls))
        print()
