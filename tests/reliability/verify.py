"""Stream building and end-to-end verification for the reliability tests.

- `build_stream`: valid posts plus poison posts of every kind, each with a unique key, and what must
  become of each (stored in Elasticsearch, or dead-lettered with a given error class and stage).
- `produce`: send them (keys -> both partitions); returns the per-partition end offsets.
- `verify`: read Elasticsearch, the DLQ and the results topic back and count lost / duplicated.
  DLQ and post-sentiment delivery is at-least-once (a worker killed after producing and before
  committing produces again), so dead letters are deduplicated on their identity
  (original.topic, original.partition, original.offset) and raw duplicates are only counted.
- `WorkerProcess`: the real worker (`python -m tests.support.chaos`) as a subprocess, with its log,
  event file, peak RSS and /metrics.
- `committed_offsets`, `scrape_metric`: what the broker says the group committed, and a gauge.
"""

from __future__ import annotations

import base64
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from tests.factories import tiny_png_b64
from tests.support.chaos import read_events
from workers.adapters.elastic import make_es_client
from workers.analyzer.worker import STALL_EXIT_CODE
from workers.devstack.sample_posts import png_bomb

ROOT = Path(__file__).resolve().parents[2]

# kind -> (error.class, stage) the DLQ headers must carry (as in workers/devstack/sample_posts.poison_posts)
POISON_KINDS: dict[str, tuple[str, str]] = {
    "json": ("MalformedPost", "validate"),
    "missing": ("InvalidPost", "validate"),
    "version": ("UnknownSchemaVersion", "validate"),
    "bytes": ("UnsupportedFormat", "decode"),
    "bomb": ("TooManyPixels", "decode"),
    "url": ("BlockedURL", "fetch"),
}


def post_value(post_id: str, image: dict, *, i: int = 0, version: int = 1, text: str | None = None) -> bytes:
    body = {
        "schema_version": version,
        "post_id": post_id,
        "author_id": f"a{i % 7}",
        "channel": f"c{i % 3}",
        "created_at": "2026-11-01T12:00:00+00:00",
        "image": image,
    }
    if text is not None:
        body["text"] = text
    return json.dumps(body).encode()


def poison_value(kind: str, key: str) -> bytes:
    def b64(data: bytes) -> dict[str, str]:
        return {"b64": base64.b64encode(data).decode()}

    if kind == "json":
        return b"{this is not json " + key.encode()
    if kind == "missing":
        return json.dumps({"schema_version": 1, "post_id": key}).encode()
    if kind == "version":
        return post_value(key, {"b64": tiny_png_b64(8, 8)}, version=99)
    if kind == "bytes":
        return post_value(key, b64(b"<html><body>not an image</body></html>"))
    if kind == "bomb":
        return post_value(key, b64(_BOMB))
    if kind == "url":
        return post_value(key, {"url": "http://127.0.0.1:9/none.jpg"})  # loopback: refused by the SSRF policy
    raise ValueError(kind)


_BOMB = png_bomb()


@dataclass
class Stream:
    records: list[tuple[str, bytes]]  # (key, value) in production order
    accepted: set[str]  # keys (= post ids) that must end in Elasticsearch
    rejected: dict[str, tuple[str, str]]  # key -> (error.class, stage) expected in the DLQ

    @property
    def values(self) -> dict[str, bytes]:
        return dict(self.records)

    def __len__(self) -> int:
        return len(self.records)


def build_stream(
    n: int, *, poison_share_per_kind: float = 0.0, seed: int = 0, prefix: str = "p", image_b64: str | None = None
) -> Stream:
    """`n` posts in all; `poison_share_per_kind` of them (rounded, at least 1 when > 0) per poison kind,
    shuffled in with a seeded RNG."""
    rng = random.Random(seed)
    per_kind = max(1, round(n * poison_share_per_kind)) if poison_share_per_kind > 0 else 0
    poison = [(kind, f"{prefix}-x{kind}-{j:05d}") for kind in POISON_KINDS for j in range(per_kind)]
    n_valid = n - len(poison)
    image = {"b64": image_b64 or tiny_png_b64(16, 16)}
    valid = [(f"{prefix}-{i:06d}", post_value(f"{prefix}-{i:06d}", image, i=i)) for i in range(n_valid)]
    records = valid + [(key, poison_value(kind, key)) for kind, key in poison]
    rng.shuffle(records)
    return Stream(records, {k for k, _ in valid}, {key: POISON_KINDS[kind] for kind, key in poison})


def produce(
    bootstrap: str,
    topic: str,
    records: list[tuple[str, bytes]],
    *,
    compression: str | None = None,
    batch_size: int = 512 << 10,
) -> tuple[dict[int, int], dict[str, tuple[int, int]]]:
    """Send, wait for every ack. Returns ({partition: end offset}, {key: (partition, offset)}).
    (kafka-python computes record-batch CRCs in pure Python: large incompressible values produce at
    only ~2-3 MB/s on this machine; compressible ones with compression="gzip" go much faster.)
    batch_size=1 sends one record per batch: tansu then reports true end offsets (it reports "start of
    the last batch + 1")."""
    producer = KafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        linger_ms=0 if batch_size <= 1 else 20,
        batch_size=batch_size,
        max_request_size=8 << 20,
        compression_type=compression,
    )
    try:
        futures = [(k, producer.send(topic, key=k.encode(), value=v)) for k, v in records]
        producer.flush(timeout=120)
        ends: dict[int, int] = {}
        where: dict[str, tuple[int, int]] = {}
        for key, fut in futures:
            md = fut.get(timeout=60)
            ends[md.partition] = max(ends.get(md.partition, 0), md.offset + 1)
            where[key] = (md.partition, md.offset)
        return ends, where
    finally:
        producer.close(timeout=10)


class Paced:
    """Produce `records` in a background thread at `rate` per second (a stream arriving while the
    worker runs). `.ends` holds the per-partition end offsets once `.join()` returns."""

    def __init__(self, bootstrap: str, topic: str, records: list[tuple[str, bytes]], rate: float, chunk: int = 50):
        import threading

        self.bootstrap, self.topic, self.records, self.rate, self.chunk = bootstrap, topic, records, rate, chunk
        self.ends: dict[int, int] = {}
        self.sent = 0
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True, name="paced-producer")

    def start(self) -> Paced:
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            producer = KafkaProducer(
                bootstrap_servers=self.bootstrap,
                acks="all",
                linger_ms=5,
                retries=20,
                max_in_flight_requests_per_connection=1,
                reconnect_backoff_max_ms=1000,
            )
            futures = []
            t0 = time.monotonic()
            for i in range(0, len(self.records), self.chunk):
                for k, v in self.records[i : i + self.chunk]:
                    futures.append(producer.send(self.topic, key=k.encode(), value=v))
                self.sent = min(len(self.records), i + self.chunk)
                ahead = t0 + self.sent / self.rate - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)
            producer.flush(timeout=120)
            for fut in futures:
                md = fut.get(timeout=60)
                self.ends[md.partition] = max(self.ends.get(md.partition, 0), md.offset + 1)
            producer.close(timeout=10)
        except BaseException as exc:  # noqa: BLE001 - re-raised by join()
            self.error = exc

    def join(self, timeout: float = 300) -> dict[int, int]:
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError("paced producer did not finish")
        if self.error is not None:
            raise self.error
        return self.ends


# ---- reading back --------------------------------------------------------------------------------


def es_ids(settings) -> list[str]:
    """Every post_id in the results index (search_after paging; duplicates would show as repeats)."""
    es = make_es_client(settings)
    try:
        es.indices.refresh(index=settings.es_results_index)
        ids: list[str] = []
        after = None
        while True:
            body: dict[str, Any] = {"size": 1000, "sort": [{"post_id": "asc"}], "_source": ["post_id"]}
            if after:
                body["search_after"] = after
            hits = es.search(index=settings.es_results_index, body=body)["hits"]["hits"]
            if not hits:
                return ids
            ids += [h["_source"]["post_id"] for h in hits]
            after = hits[-1]["sort"]
    finally:
        es.close()


def es_count(settings) -> int:
    es = make_es_client(settings)
    try:
        es.indices.refresh(index=settings.es_results_index)
        return int(es.count(index=settings.es_results_index)["count"])
    except Exception:  # noqa: BLE001 - store down: unknown
        return -1
    finally:
        es.close()


def read_topic(
    bootstrap: str, topic: str, *, expect_at_least: int, quiet_s: float = 1.5, timeout_s: float = 60
) -> list:
    """All records of `topic`: read until `expect_at_least` arrived and then nothing new for `quiet_s`
    (tansu's end offsets are wrong, so they cannot say where the end is)."""
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
        max_partition_fetch_bytes=8 << 20,
    )
    records: list = []
    deadline = time.monotonic() + timeout_s
    last_new = time.monotonic()
    try:
        while time.monotonic() < deadline:
            got = 0
            for batch in consumer.poll(timeout_ms=300).values():
                records += batch
                got += len(batch)
            if got:
                last_new = time.monotonic()
            elif len(records) >= expect_at_least and time.monotonic() - last_new > quiet_s:
                break
    finally:
        consumer.close()
    return records


_ADMINS: dict[str, Any] = {}


def committed_offsets(bootstrap: str, group: str, topic: str, partitions: int = 2) -> dict[int, int]:
    """{partition: committed offset} as the broker has it (missing partitions: nothing committed).
    One admin client per broker is kept; it is rebuilt after an error (a broker restart)."""
    from kafka import KafkaAdminClient

    admin = _ADMINS.get(bootstrap)
    try:
        if admin is None:
            admin = _ADMINS[bootstrap] = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000)
        got = admin.list_group_offsets({group: [TopicPartition(topic, p) for p in range(partitions)]})[group]
    except Exception:
        _ADMINS.pop(bootstrap, None)
        if admin is not None:
            try:
                admin.close()
            except Exception:  # noqa: BLE001 - closing must not mask the original error
                pass
        raise
    return {tp.partition: om.offset for tp, om in got.items() if tp.topic == topic and om.offset >= 0}


def close_admins() -> None:
    for admin in _ADMINS.values():
        try:
            admin.close()
        except Exception:  # noqa: BLE001 - best-effort teardown of a broker that may be gone
            pass
    _ADMINS.clear()


def scrape_metric(metrics_url: str, name: str) -> dict[str, float]:
    """{label text: value} of one metric family from a Prometheus text endpoint ({} if unreachable)."""
    try:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(metrics_url + "/metrics", timeout=2) as resp:
            text = resp.read().decode()
    except OSError:
        return {}
    out = {}
    for line in text.splitlines():
        m = re.match(rf"^{re.escape(name)}(\{{[^}}]*\}})?\s+(\S+)$", line)
        if m:
            out[m.group(1) or ""] = float(m.group(2))
    return out


@dataclass
class Verdict:
    """Counts for the closing note; `ok` when nothing is lost, duplicated or wrong."""

    produced: int
    accepted: int
    rejected: int
    es_docs: int = 0
    es_missing: list[str] = field(default_factory=list)
    es_extra: list[str] = field(default_factory=list)
    es_duplicates: int = 0
    dlq_raw: int = 0
    dlq_unique: int = 0
    dlq_raw_duplicates: int = 0
    dlq_missing: list[str] = field(default_factory=list)
    dlq_extra: list[str] = field(default_factory=list)
    dlq_wrong: list[str] = field(default_factory=list)
    results_raw: int = 0
    results_raw_duplicates: int = 0
    results_missing: list[str] = field(default_factory=list)
    results_offset_holes: int = 0  # offsets the broker assigned on the results topic but cannot serve
    tolerate_broker_holes: bool = False

    @property
    def lost(self) -> int:
        return len(self.es_missing) + len(self.dlq_missing)

    @property
    def duplicated(self) -> int:
        """Duplicates that count against exactly-once: in Elasticsearch, and in the DLQ after
        deduplication on the original record's identity."""
        return self.es_duplicates + len(self.dlq_extra)

    @property
    def ok(self) -> bool:
        results_ok = not self.results_missing or (
            self.tolerate_broker_holes and len(self.results_missing) <= self.results_offset_holes
        )
        return not (self.lost or self.duplicated or self.es_extra or self.dlq_wrong) and results_ok

    def figures(self) -> dict[str, Any]:
        return {
            "posts": self.produced,
            "accepted": self.accepted,
            "rejected": self.rejected,
            "es_docs": self.es_docs,
            "lost": self.lost,
            "duplicated": self.duplicated,
            "es_missing": len(self.es_missing),
            "es_extra": len(self.es_extra),
            "es_duplicates": self.es_duplicates,
            "dlq_unique": self.dlq_unique,
            "dlq_raw": self.dlq_raw,
            "dlq_raw_duplicates": self.dlq_raw_duplicates,
            "dlq_wrong_reason": len(self.dlq_wrong),
            "results_raw": self.results_raw,
            "results_raw_duplicates": self.results_raw_duplicates,
            "results_missing": len(self.results_missing),
            "results_offset_holes": self.results_offset_holes,
        }

    def explain(self) -> str:
        parts = [json.dumps(self.figures())]
        for name in ("es_missing", "es_extra", "dlq_missing", "dlq_extra", "dlq_wrong", "results_missing"):
            items = getattr(self, name)
            if items:
                parts.append(f"{name} ({len(items)}): {items[:10]}")
        return "\n".join(parts)


def verify(
    settings,
    stream: Stream,
    *,
    check_results_topic: bool = True,
    results_timeout_s: float = 60,
    tolerate_broker_holes: bool = False,
) -> Verdict:
    """tolerate_broker_holes: results missing from post-sentiment are accepted when the topic has at
    least as many offset holes (offsets tansu assigned, and so acknowledged, but never stored: seen
    when tansu on s3:// is stopped under load). Elasticsearch and the DLQ are always strict."""
    v = Verdict(
        produced=len(stream),
        accepted=len(stream.accepted),
        rejected=len(stream.rejected),
        tolerate_broker_holes=tolerate_broker_holes,
    )
    ids = es_ids(settings)
    counts = Counter(ids)
    v.es_docs = len(ids)
    v.es_duplicates = sum(c - 1 for c in counts.values())
    v.es_missing = sorted(stream.accepted - counts.keys())
    v.es_extra = sorted(counts.keys() - stream.accepted)

    dlq = (
        read_topic(
            settings.kafka_bootstrap,
            settings.dlq_topic,
            expect_at_least=len(stream.rejected),
            timeout_s=results_timeout_s,
        )
        if stream.rejected
        else []
    )
    v.dlq_raw = len(dlq)
    identities: dict[tuple[str, str, str], Any] = {}
    for rec in dlq:
        h = {k: val.decode() for k, val in (rec.headers or [])}
        ident = (h.get("original.topic", "?"), h.get("original.partition", "?"), h.get("original.offset", "?"))
        identities.setdefault(ident, (rec, h))
    v.dlq_unique = len(identities)
    v.dlq_raw_duplicates = v.dlq_raw - v.dlq_unique
    per_key = Counter()
    values = stream.values
    for (topic, _p, _o), (rec, h) in identities.items():
        key = rec.key.decode() if rec.key else ""
        per_key[key] += 1
        want = stream.rejected.get(key)
        if want is None:
            continue  # counted as extra below
        got = (h.get("error.class"), h.get("stage"))
        if got != want or topic != settings.posts_topic or not h.get("error.message") or rec.value != values[key]:
            v.dlq_wrong.append(f"{key}: {got} (want {want}) message={h.get('error.message', '')[:80]!r}")
    v.dlq_missing = sorted(set(stream.rejected) - per_key.keys())
    v.dlq_extra = sorted([k for k, c in per_key.items() if k not in stream.rejected or c > 1])

    if check_results_topic and stream.accepted:
        results = read_topic(
            settings.kafka_bootstrap,
            settings.results_topic,
            expect_at_least=len(stream.accepted),
            timeout_s=results_timeout_s,
        )
        keys = Counter(r.key.decode() for r in results)
        v.results_raw = len(results)
        v.results_raw_duplicates = sum(c - 1 for c in keys.values())
        v.results_missing = sorted(stream.accepted - keys.keys())
        offsets: dict[int, set[int]] = {}
        for r in results:
            offsets.setdefault(r.partition, set()).add(r.offset)
        v.results_offset_holes = sum(max(o) - min(o) + 1 - len(o) for o in offsets.values() if o)
    return v


# ---- the worker subprocess -----------------------------------------------------------------------


def settings_env(settings) -> dict[str, str]:
    env: dict[str, str] = {}
    for name, value in settings.model_dump().items():
        if value is None or isinstance(value, (dict, list)):
            continue
        if hasattr(value, "get_secret_value"):
            value = value.get_secret_value()
        env[f"MOODWATCH_{name.upper()}"] = str(value)
    return env


class WorkerProcess:
    """`python -m tests.support.chaos` with the given settings; output to `log_path`."""

    def __init__(self, settings, workdir: Path, *, extra_env: dict[str, str] | None = None, name: str = "worker"):
        self.settings = settings
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.events_path = self.workdir / "events.jsonl"
        self.log_path = self.workdir / f"{name}.log"
        self.extra_env = dict(extra_env or {})
        self.proc: subprocess.Popen | None = None
        self.peak_rss_kb = 0
        self.starts = 0
        # Like a Deployment's restartPolicy for the one exit that asks for it (the stall watchdog's):
        # alive() restarts the worker when it has exited with STALL_EXIT_CODE.
        self.restart_on_stall_exit = False
        self.stall_restarts = 0

    def env(self, **more: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MOODWATCH_")}
        env.update(settings_env(self.settings))
        env.update(
            {
                "PYTHONPATH": str(ROOT),
                "MOODWATCH_CHAOS_EVENTS": str(self.events_path),
                "MOODWATCH_LOG_JSON": "true",
                "OMP_NUM_THREADS": "1",
                "MKL_NUM_THREADS": "1",
            }
        )
        env.update(self.extra_env)
        env.update(more)
        return env

    def start(self, **more_env: str) -> WorkerProcess:
        assert self.proc is None or self.proc.poll() is not None, "worker already running"
        self.starts += 1
        with open(self.log_path, "ab") as log:
            log.write(f"\n=== start #{self.starts} {time.strftime('%H:%M:%S')} {sorted(more_env.items())}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tests.support.chaos"],
                cwd=ROOT,
                env=self.env(**more_env),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        if self.proc is None:
            return False
        if self.proc.poll() is None:
            return True
        if self.restart_on_stall_exit and self.proc.returncode == STALL_EXIT_CODE:
            self.stall_restarts += 1
            self.start()
            return True
        return False

    def sample_memory(self) -> dict[str, int]:
        """VmRSS / VmHWM in kB from /proc (the HWM is the process's own peak so far)."""
        out: dict[str, int] = {}
        if not self.alive():
            return out
        try:
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith(("VmRSS:", "VmHWM:")):
                    k, v = line.split(":", 1)
                    out[k] = int(v.split()[0])
        except (FileNotFoundError, ProcessLookupError, ValueError):
            return out
        self.peak_rss_kb = max(self.peak_rss_kb, out.get("VmHWM", 0))
        return out

    def events(self, kind: str | None = None) -> list[dict[str, Any]]:
        evs = read_events(self.events_path)
        return [e for e in evs if kind is None or e["event"] == kind]

    def wait_event(self, kind: str, *, count: int = 1, timeout: float = 120, since: float = 0.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            evs = [e for e in self.events(kind) if e["t"] >= since]
            if len(evs) >= count:
                return evs[count - 1]
            if not self.alive():
                raise AssertionError(
                    f"worker exited ({self.proc.returncode}) before event {kind!r}:\n{self.log_tail()}"
                )
            time.sleep(0.1)
        raise TimeoutError(f"no {kind!r} event within {timeout} s:\n{self.log_tail()}")

    def kill(self) -> None:
        if self.alive():
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(30)

    def stop(self, timeout: float = 60) -> int | None:
        """SIGTERM (the worker finishes its batch, commits, exits); SIGKILL if it hangs."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)
        return self.proc.returncode

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])


def wait_until(
    predicate: Callable[[], Any],
    *,
    timeout: float,
    interval: float = 0.25,
    what: str = "condition",
    while_alive: WorkerProcess | None = None,
    on_tick: Callable[[], None] | None = None,
) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        if on_tick is not None:
            on_tick()
        value = predicate()
        if value:
            return value
        if while_alive is not None and not while_alive.alive():
            raise AssertionError(
                f"worker exited ({while_alive.proc.returncode}) while waiting for {what}:\n{while_alive.log_tail()}"
            )
        if time.monotonic() > deadline:
            detail = f"\n{while_alive.log_tail()}" if while_alive is not None else ""
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}{detail}")
        time.sleep(interval)


def all_committed(bootstrap: str, group: str, topic: str, ends: dict[int, int]) -> Callable[[], bool]:
    def check() -> bool:
        try:
            got = committed_offsets(bootstrap, group, topic, max(ends) + 1 if ends else 1)
        except Exception:  # noqa: BLE001 - broker restarting
            return False
        return all(got.get(p, 0) >= end for p, end in ends.items())

    return check
