"""The README documents every setting and the commands it promises exist."""

from pathlib import Path

from workers.cli.settings_doc import all_settings_classes, markdown

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def test_every_setting_is_documented_in_the_readme():
    missing = [
        f"MOODWATCH_{name.upper()}"
        for cls in all_settings_classes()
        for name in cls.model_fields
        if f"`MOODWATCH_{name.upper()}`" not in README
    ]
    assert not missing, f"settings missing from README.md: {missing} (python -m workers.cli.settings_doc)"


def test_readme_settings_tables_match_the_code():
    assert markdown() in README, "README settings tables are stale: paste `python -m workers.cli.settings_doc`"


def test_readme_names_the_two_commands():
    assert "make demo" in README and "make test" in README
