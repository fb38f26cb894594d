"""`moodwatch dlq replay` re-publishes dead letters (filtered) to the posts topic, resumably."""

from __future__ import annotations

from kafka import KafkaProducer
from typer.testing import CliRunner

from tests.reliability.verify import read_topic
from workers.cli import app


def _dead_letter(producer, topic, key, stage, error_class, offset):
    headers = [
        ("error.class", error_class.encode()),
        ("error.message", b"boom"),
        ("stage", stage.encode()),
        ("original.topic", b""),
        ("original.partition", b"0"),
        ("original.offset", str(offset).encode()),
    ]
    producer.send(topic, key=key.encode(), value=f'{{"post": "{key}"}}'.encode(), headers=headers)


def _read_all(bootstrap, topic):
    return read_topic(bootstrap, topic, expect_at_least=0)


def test_replay_filters_by_stage_and_resumes(tansu, fresh_topics, monkeypatch):
    topics = fresh_topics("posts", "posts.dlq")
    producer = KafkaProducer(bootstrap_servers=tansu.bootstrap)
    for i, (stage, error) in enumerate(
        [("fetch", "FetchFailed"), ("validate", "InvalidPost"), ("fetch", "FetchTimeout")]
    ):
        _dead_letter(producer, topics["posts.dlq"], f"post-{i}", stage, error, i)
    producer.flush()
    producer.close()
    for name, value in {
        "KAFKA_BOOTSTRAP": tansu.bootstrap,
        "POSTS_TOPIC": topics["posts"],
        "DLQ_TOPIC": topics["posts.dlq"],
        "KAFKA_SESSION_TIMEOUT_MS": "6000",
    }.items():
        monkeypatch.setenv(f"MOODWATCH_{name}", value)
    runner = CliRunner()

    dry = runner.invoke(app, ["dlq", "replay", "--stage", "fetch", "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert "would replay 2 post(s)" in dry.output
    assert _read_all(tansu.bootstrap, topics["posts"]) == []

    group = f"replay-{topics['posts']}"
    first = runner.invoke(app, ["dlq", "replay", "--stage", "fetch", "--group-id", group])
    assert first.exit_code == 0, first.output
    replayed = _read_all(tansu.bootstrap, topics["posts"])
    assert sorted(r.key.decode() for r in replayed) == ["post-0", "post-2"]
    assert all(dict(r.headers)["replayed.from"].startswith(topics["posts.dlq"].encode()) for r in replayed)

    again = runner.invoke(app, ["dlq", "replay", "--stage", "fetch", "--group-id", group])
    assert "replayed 0 post(s)" in again.output  # progress is committed: nothing is replayed twice
    assert len(_read_all(tansu.bootstrap, topics["posts"])) == 2
