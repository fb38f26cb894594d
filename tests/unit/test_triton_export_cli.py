"""`moodwatch triton export` exports the model the worker will call (MOODWATCH_TRITON_MODEL) unless told otherwise."""

from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

from workers.cli import app


@pytest.fixture
def exported(monkeypatch, tmp_path):
    calls = []

    def fake_export(heads, index, repo, kind, **kwargs):
        calls.append(kwargs["models"])
        return SimpleNamespace(to_json=lambda: {"models": kwargs["models"]})

    monkeypatch.setattr("pipelines.export.export_repository", fake_export)
    monkeypatch.delenv("MOODWATCH_TRITON_MODEL", raising=False)
    (tmp_path / "heads.pt").write_bytes(b"")

    def run(*extra: str, env: dict[str, str] | None = None) -> list[str]:
        args = ["triton", "export", "--repo", str(tmp_path / "repo"), "--heads", str(tmp_path / "heads.pt")]
        result = CliRunner().invoke(app, [*args, "--index", str(tmp_path), *extra], env=env)
        assert result.exit_code == 0, result.output
        return calls[-1]

    return run


def test_the_default_export_is_the_default_model_with_learned_proposals(exported):
    assert exported() == ["moodwatch_learned"]


def test_the_export_follows_moodwatch_triton_model(exported):
    assert exported(env={"MOODWATCH_TRITON_MODEL": "moodwatch"}) == ["moodwatch"]


def test_models_named_on_the_command_line_win(exported):
    assert exported("--model", "moodwatch", "--model", "moodwatch_fused") == ["moodwatch", "moodwatch_fused"]
