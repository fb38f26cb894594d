"""Per-channel windowed mood state and spike / emotion-shift detection. Pure: no I/O, no clocks.

Everything here runs on a plain ``MutableMapping[str, dict]`` (a ``dict`` in tests, a faust table
with a changelog in the aggregator), so the logic the tests exercise is the logic that runs.

Windows are event-time (the post's ``created_at``), aligned to the epoch:

* tumbling windows of ``window_s`` seconds: what spike detection runs on;
* hopping windows of ``hop_size_s`` every ``hop_step_s`` seconds: smoother state for the views.

Each window holds the post count, counts per polarity, the summed emotion distribution (mean =
sum / count), how many posts had each dominant emotion, and so the negative share.

Delivery into ``post-sentiment`` is at-least-once, so every post is deduplicated by ``post_id``
within its tumbling window (a short hash, kept in a few shards per window so each state record
stays small) before it touches any window.

Detection, per channel and per tumbling window ``W``, against the trailing ``baseline_windows``
windows before ``W`` (pooled, shrunk towards ``prior_negative_share`` so thin baselines don't make
everything look significant):

``negative_spike``
    evaluated on every new post of the window once it holds ``min_count`` posts (early firing,
    so an alert comes within the spike's own window): one-sided exact binomial test
    ``k ~ Bin(n, p_baseline)``, ``alternative="greater"``. It *arms* (raises an alert) when
    ``p < alpha_arm`` and ``share - baseline >= min_effect``; it *disarms* when a closed window is
    quiet: fewer than ``min_count`` posts, or ``p > alpha_disarm`` or ``effect < disarm_effect``
    (hysteresis). While armed nothing is raised; after an alert no other alert of that kind is
    raised for ``cooldown_windows`` windows even if it disarmed in between. One incident, one alert.
``emotion_shift``
    evaluated when a window closes (complete counts): the dominant emotion of the window's mean
    distribution differs from the baseline's, with at least ``shift_min_count`` posts, the new
    dominant emotion's mean probability up by ``shift_min_effect`` and ahead of the old one by
    ``shift_min_lead``, and a one-sided conditional binomial test (current vs baseline rate of
    posts having it as their dominant emotion, so the baseline's own noise counts) with
    ``p < shift_alpha``. A shift into a negative emotion while a negative-spike incident is open
    or cooling down is part of that incident: the spike alert already carries ``dominant_emotion``
    and ``previous_dominant_emotion``, so no second alert.

``alert_id`` is a hash of channel + kind + window start: re-emitting after a restart overwrites the
same Elasticsearch document and is deduplicable downstream.
"""

from __future__ import annotations

import copy
import hashlib
import math
from collections.abc import Callable, Iterable, Mapping, MutableMapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Literal

from scipy.stats import binomtest

from schemas.emotions import MIKELS_EMOTIONS, NEGATIVE_EMOTIONS
from schemas.results import AlertV1, AnalysisResultV1

N_EMOTIONS = len(MIKELS_EMOTIONS)
AlertKind = Literal["negative_spike", "emotion_shift"]
KINDS: tuple[AlertKind, ...] = ("negative_spike", "emotion_shift")


# --------------------------------------------------------------------------------------------
# configuration and input


@dataclass(frozen=True)
class DetectorConfig:
    """Window sizes and detection thresholds (see the module docstring for what each one does)."""

    window_s: int = 300
    hop_size_s: int = 900
    hop_step_s: int = 300
    baseline_windows: int = 12
    retention_windows: int = 14  # windows (and their dedup sets) kept behind the newest one
    min_count: int = 12
    min_baseline_count: int = 30
    alpha_arm: float = 1e-5
    alpha_disarm: float = 0.05
    min_effect: float = 0.25
    disarm_effect: float = 0.10
    cooldown_windows: int = 3
    prior_negative_share: float = 0.3
    prior_strength: float = 10.0
    shift_min_count: int = 20
    shift_alpha: float = 1e-4
    shift_min_effect: float = 0.10
    shift_min_lead: float = 0.05
    shift_disarm_effect: float = 0.05
    dedup_shards: int = 8

    def __post_init__(self) -> None:
        if self.window_s <= 0 or self.hop_size_s <= 0 or self.hop_step_s <= 0:
            raise ValueError("window sizes must be positive")
        if self.hop_size_s % self.hop_step_s:
            raise ValueError("hop_size_s must be a multiple of hop_step_s")
        if self.baseline_windows < 1:
            raise ValueError("baseline_windows must be >= 1")
        if self.retention_windows < self.baseline_windows + 1:
            raise ValueError("retention_windows must be > baseline_windows (the baseline must still be there)")
        if not (0 < self.alpha_arm <= self.alpha_disarm < 1):
            raise ValueError("need 0 < alpha_arm <= alpha_disarm < 1 (hysteresis)")
        if not (0 <= self.disarm_effect <= self.min_effect):
            raise ValueError("need 0 <= disarm_effect <= min_effect (hysteresis)")
        if not (0 <= self.shift_disarm_effect <= self.shift_min_effect):
            raise ValueError("need 0 <= shift_disarm_effect <= shift_min_effect (hysteresis)")
        if self.dedup_shards < 1:
            raise ValueError("dedup_shards must be >= 1")


@dataclass(frozen=True)
class Observation:
    """The part of an AnalysisResultV1 that the aggregator needs (compact, JSON-friendly)."""

    post_id: str
    channel: str
    ts: float  # event time: created_at as epoch seconds
    negative: bool
    emotions: tuple[float, ...]  # wheel order, len 8
    neutral: bool = False  # three-way results (schema v2); a v1 result is positive or negative

    @classmethod
    def from_result(cls, result: AnalysisResultV1 | Any) -> Observation:
        """From an AnalysisResultV1 or any view of one with the same fields (the aggregator's)."""
        return cls(
            post_id=result.post_id,
            channel=result.channel,
            ts=result.created_at.timestamp(),
            negative=result.polarity == "negative",
            emotions=tuple(result.emotions.as_list()),
            neutral=result.polarity == "neutral",
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "p": self.post_id,
            "c": self.channel,
            "t": self.ts,
            "n": self.negative,
            "u": self.neutral,
            "e": list(self.emotions),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Observation:
        emotions = tuple(float(x) for x in d["e"])
        if len(emotions) != N_EMOTIONS or not all(math.isfinite(x) for x in emotions):
            raise ValueError("emotions must be 8 finite numbers")
        ts = float(d["t"])
        if not math.isfinite(ts):
            raise ValueError("ts must be finite")
        return cls(
            post_id=str(d["p"]),
            channel=str(d["c"]),
            ts=ts,
            negative=bool(d["n"]),
            emotions=emotions,
            neutral=bool(d.get("u", False)),  # records written before three-way polarity have no "u"
        )

    @property
    def dominant(self) -> int:
        return max(range(N_EMOTIONS), key=self.emotions.__getitem__)


# --------------------------------------------------------------------------------------------
# window statistics


@dataclass
class WindowStats:
    start: int
    size: int
    count: int = 0  # every post, neutral ones included
    negative: int = 0
    neutral: int = 0
    emotion_sum: list[float] = field(default_factory=lambda: [0.0] * N_EMOTIONS)
    dominant_counts: list[int] = field(default_factory=lambda: [0] * N_EMOTIONS)

    @property
    def end(self) -> int:
        return self.start + self.size

    @property
    def positive(self) -> int:
        return self.count - self.negative - self.neutral

    @property
    def negative_share(self) -> float:
        """Negative posts / all posts (neutral ones count in the total)."""
        return self.negative / self.count if self.count else 0.0

    @property
    def mean_emotions(self) -> list[float]:
        return [s / self.count for s in self.emotion_sum] if self.count else [0.0] * N_EMOTIONS

    @property
    def dominant(self) -> int | None:
        if not self.count:
            return None
        return max(range(N_EMOTIONS), key=self.emotion_sum.__getitem__)

    def add(self, obs: Observation) -> None:
        self.count += 1
        self.negative += int(obs.negative)
        self.neutral += int(obs.neutral)
        for i, v in enumerate(obs.emotions):
            self.emotion_sum[i] += v
        self.dominant_counts[obs.dominant] += 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "start": self.start,
            "size": self.size,
            "count": self.count,
            "negative": self.negative,
            "neutral": self.neutral,
            "emotion_sum": list(self.emotion_sum),
            "dominant_counts": list(self.dominant_counts),
        }

    def summary(self) -> dict[str, Any]:
        """JSON view for humans / APIs: counts per polarity, negative share, mean emotions."""
        return {
            "start": iso(self.start),
            "end": iso(self.end),
            "count": self.count,
            "positive": self.positive,
            "neutral": self.neutral,
            "negative": self.negative,
            "negative_share": round(self.negative_share, 6),
            "mean_emotions": dict(zip(MIKELS_EMOTIONS, (round(v, 6) for v in self.mean_emotions))),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> WindowStats:
        return cls(
            start=int(d["start"]),
            size=int(d["size"]),
            count=int(d["count"]),
            negative=int(d["negative"]),
            neutral=int(d.get("neutral", 0)),  # tables written before three-way polarity
            emotion_sum=[float(x) for x in d["emotion_sum"]],
            dominant_counts=[int(x) for x in d["dominant_counts"]],
        )

    @classmethod
    def pooled(cls, windows: Iterable[WindowStats], start: int, size: int) -> WindowStats:
        out = cls(start=start, size=size)
        for w in windows:
            out.count += w.count
            out.negative += w.negative
            out.neutral += w.neutral
            for i in range(N_EMOTIONS):
                out.emotion_sum[i] += w.emotion_sum[i]
                out.dominant_counts[i] += w.dominant_counts[i]
        return out


def tumbling_start(ts: float, size: int) -> int:
    return int(math.floor(ts / size)) * size


def hopping_starts(ts: float, size: int, step: int) -> list[int]:
    """Starts of every hopping window [s, s+size) with s a multiple of step that contains ts."""
    last = tumbling_start(ts, step)
    return [s for s in range(last - size + step, last + 1, step) if s <= ts < s + size]


def iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, tz=UTC).isoformat().replace("+00:00", "Z")


def alert_id(channel: str, kind: str, window_start: int | float | datetime) -> str:
    """Deterministic id: the same incident always gets the same id (idempotent re-emission)."""
    if isinstance(window_start, datetime):
        window_start = window_start.timestamp()
    key = f"{channel}|{kind}|{int(window_start)}".encode()
    return hashlib.sha256(key).hexdigest()[:32]


def post_hash(post_id: str) -> str:
    return hashlib.blake2b(post_id.encode(), digest_size=8).hexdigest()


# --------------------------------------------------------------------------------------------
# the statistics


@dataclass(frozen=True)
class NegativeEvaluation:
    count: int
    negative: int
    observed_share: float
    baseline_share: float
    baseline_count: int
    effect: float
    p_value: float
    arm: bool
    quiet: bool


def shrunk_share(successes: int, trials: int, prior: float, strength: float) -> float:
    return (successes + prior * strength) / (trials + strength)


def binomial_greater(k: int, n: int, p: float) -> float:
    """One-sided exact binomial test P(X >= k | n, p)."""
    if n <= 0:
        return 1.0
    p = min(max(p, 1e-9), 1 - 1e-9)
    return float(binomtest(k, n, p, alternative="greater").pvalue)


def evaluate_negative(current: WindowStats, baseline: WindowStats, cfg: DetectorConfig) -> NegativeEvaluation:
    base = shrunk_share(baseline.negative, baseline.count, cfg.prior_negative_share, cfg.prior_strength)
    observed = current.negative_share
    effect = observed - base
    enough = current.count >= cfg.min_count and baseline.count >= cfg.min_baseline_count
    # the cheap checks first: the exact test only runs when it can change the answer
    if current.count and effect >= min(cfg.min_effect, cfg.disarm_effect) and enough:
        p_value = binomial_greater(current.negative, current.count, base)
    else:
        p_value = 1.0
    arm = enough and effect >= cfg.min_effect and p_value < cfg.alpha_arm
    quiet = current.count < cfg.min_count or effect < cfg.disarm_effect or p_value > cfg.alpha_disarm
    return NegativeEvaluation(
        count=current.count,
        negative=current.negative,
        observed_share=observed,
        baseline_share=base,
        baseline_count=baseline.count,
        effect=effect,
        p_value=p_value,
        arm=arm,
        quiet=quiet,
    )


@dataclass(frozen=True)
class ShiftEvaluation:
    dominant: int | None
    previous: int | None
    effect: float
    p_value: float
    arm: bool
    quiet: bool


def evaluate_shift(current: WindowStats, baseline: WindowStats, cfg: DetectorConfig) -> ShiftEvaluation:
    dom, prev = current.dominant, baseline.dominant
    if dom is None or prev is None or dom == prev or baseline.count < cfg.min_baseline_count:
        return ShiftEvaluation(dom, prev, 0.0, 1.0, False, True)
    mean = current.mean_emotions
    effect = mean[dom] - baseline.mean_emotions[dom]
    lead = mean[dom] - mean[prev]  # the new emotion must clearly lead the old one, not tie with it
    p_value = 1.0
    if current.count >= cfg.shift_min_count and effect >= cfg.shift_min_effect and lead >= cfg.shift_min_lead:
        p_value = rate_ratio_greater(
            current.dominant_counts[dom], current.count, baseline.dominant_counts[dom], baseline.count
        )
    arm = p_value < cfg.shift_alpha  # only computed when count, effect and lead are there
    quiet = current.count < cfg.shift_min_count or effect < cfg.shift_disarm_effect or lead <= 0
    return ShiftEvaluation(dom, prev, effect, p_value, arm, quiet)


def rate_ratio_greater(k1: int, n1: int, k0: int, n0: int) -> float:
    """Conditional exact test (Przyborowski-Wilenski) that rate k1/n1 exceeds rate k0/n0.

    Given k1 + k0 events, k1 ~ Bin(k1 + k0, n1 / (n1 + n0)) under equal rates: a binomial test
    that, unlike a test against a fixed baseline share, accounts for the baseline's own noise.
    """
    if k1 + k0 == 0 or n1 <= 0 or n0 <= 0:
        return 1.0
    return binomial_greater(k1, k1 + k0, n1 / (n1 + n0))


# --------------------------------------------------------------------------------------------
# the state machine over a key-value store


def _wkey(channel: str, kind: str, size: int, start: int) -> str:
    return f"w|{channel}|{kind}{size}|{start}"


def _dkey(channel: str, start: int, shard: int) -> str:
    return f"d|{channel}|{start}|{shard}"


def _ckey(channel: str) -> str:
    return f"c|{channel}"


def _new_detector() -> dict[str, Any]:
    return {"firing": False, "last_alert_start": None}


_DELETED = object()


class _Overlay:
    """Reads through to the store, buffers writes: nothing of a step is stored before its alerts."""

    def __init__(self, base: MutableMapping[str, Any]) -> None:
        self.base = base
        self.writes: dict[str, Any] = {}

    def get(self, key: str, default: Any = None) -> Any:
        if key in self.writes:
            value = self.writes[key]
            return default if value is _DELETED else value
        return self.base.get(key, default)

    def __contains__(self, key: str) -> bool:
        if key in self.writes:
            return self.writes[key] is not _DELETED
        return key in self.base

    def __setitem__(self, key: str, value: Any) -> None:
        self.writes[key] = value

    def __delitem__(self, key: str) -> None:
        self.writes[key] = _DELETED


@dataclass
class StepResult:
    """What happened to one observation, and the state writes it needs (not applied yet).

    The caller publishes ``alerts`` first (and waits for the broker's ack), then calls
    ``MoodAggregator.apply(result)``: a crash in between re-processes the post and re-raises the
    same alert (same ``alert_id``), never loses it.
    """

    status: Literal["accepted", "duplicate", "late"]
    alerts: list[AlertV1] = field(default_factory=list)
    writes: dict[str, Any] = field(default_factory=dict)


@dataclass
class BatchResult:
    """``process_many``: counts per status, the alerts in order, the coalesced writes."""

    statuses: dict[str, int] = field(default_factory=dict)
    alerts: list[AlertV1] = field(default_factory=list)
    writes: dict[str, Any] = field(default_factory=dict)


class MoodAggregator:
    """Windowed state + detection over a key-value store (dict in tests, faust table in the worker).

    Store layout (values are JSON-serialisable dicts; every write is a whole value, so a faust
    table's changelog records each change):

    ``c|CHANNEL``                 channel state: newest tumbling window start, detector states
    ``w|CHANNEL|T300|START``      a tumbling window (``H900`` for hopping)
    ``d|CHANNEL|START|SHARD``     post-id hashes seen in a tumbling window (dedup)
    """

    def __init__(
        self, store: MutableMapping[str, Any], cfg: DetectorConfig, *, now=None,
        overrides: Callable[[str], Mapping[str, Any]] | None = None,
    ) -> None:  # fmt: skip
        """``overrides(channel)``: that channel's own spike thresholds ({} = the global ones), e.g. the
        per-channel settings admins make in the dashboard; any other field stays global."""
        self.store = store
        self._tx: _Overlay | None = None
        self.cfg = cfg
        self._overrides = overrides
        self._channel_cfg: dict[str, tuple[tuple[Any, ...], DetectorConfig]] = {}
        self._now = now or (lambda: datetime.now(UTC))
        # derived, in memory only: channel -> (window start, pooled baseline before it)
        self._baseline_cache: dict[str, tuple[int, WindowStats]] = {}

    @property
    def _s(self) -> Any:
        return self._tx if self._tx is not None else self.store

    # -- reads ---------------------------------------------------------------------------------
    def spike_config(self, channel: str) -> DetectorConfig:
        """The config a channel's negative-spike test uses: the global one with the channel's overrides
        (min_count, alpha_arm, min_effect). Overrides that break the hysteresis (alpha_arm above
        alpha_disarm, min_effect below disarm_effect) are ignored: the global config is used."""
        wanted = dict(self._overrides(channel)) if self._overrides is not None else {}
        if not wanted:
            return self.cfg
        key = tuple(sorted(wanted.items()))
        cached = self._channel_cfg.get(channel)
        if cached is None or cached[0] != key:
            try:
                cfg = replace(self.cfg, **wanted)
            except (TypeError, ValueError):
                cfg = self.cfg
            cached = self._channel_cfg[channel] = (key, cfg)
        return cached[1]

    def channel_state(self, channel: str) -> dict[str, Any]:
        st = self._s.get(_ckey(channel))
        if st is None:
            return {"channel": channel, "current": None, "det": {k: _new_detector() for k in KINDS}}
        return copy.deepcopy(st)  # never mutate what the store holds: writes go through the overlay

    def window(self, channel: str, start: int, *, hopping: bool = False) -> WindowStats:
        size = self.cfg.hop_size_s if hopping else self.cfg.window_s
        raw = self._s.get(_wkey(channel, "H" if hopping else "T", size, start))
        return WindowStats.from_dict(raw) if raw is not None else WindowStats(start=start, size=size)

    def baseline(self, channel: str, start: int) -> WindowStats:
        cached = self._baseline_cache.get(channel)
        if cached is not None and cached[0] == start:
            return cached[1]
        pooled = self._pool_baseline(channel, start)
        self._baseline_cache[channel] = (start, pooled)
        return pooled

    def _pool_baseline(self, channel: str, start: int) -> WindowStats:
        w = self.cfg.window_s
        starts = [start - i * w for i in range(1, self.cfg.baseline_windows + 1)]
        return WindowStats.pooled((self.window(channel, s) for s in starts), start - len(starts) * w, len(starts) * w)

    # -- the one write path --------------------------------------------------------------------
    def process(self, obs: Observation) -> StepResult:
        """Evaluate one observation; its state writes come back in ``result.writes`` (see apply)."""
        self._tx = _Overlay(self.store)
        try:
            result = self._process(obs)
        except BaseException:
            self._baseline_cache.pop(obs.channel, None)
            raise
        finally:
            tx, self._tx = self._tx, None
        result.writes = tx.writes
        return result

    def apply(self, result: StepResult | BatchResult) -> None:
        """Store the writes of a processed step (after its alerts were published)."""
        for key, value in result.writes.items():
            if value is _DELETED:
                if key in self.store:
                    del self.store[key]
            else:
                self.store[key] = value

    def process_many(self, observations: Iterable[Observation]) -> BatchResult:
        """Evaluate a batch in order; writes to the same key are coalesced (one write per key).

        Same alerts and same final state as processing them one by one, with far fewer state
        writes (a faust table writes a changelog record per write).
        """
        self._tx = _Overlay(self.store)
        statuses: dict[str, int] = {}
        alerts: list[AlertV1] = []
        channels: set[str] = set()
        try:
            for obs in observations:
                channels.add(obs.channel)
                r = self._process(obs)
                statuses[r.status] = statuses.get(r.status, 0) + 1
                alerts.extend(r.alerts)
        except BaseException:
            for channel in channels:
                self._baseline_cache.pop(channel, None)
            raise
        finally:
            tx, self._tx = self._tx, None
        return BatchResult(statuses=statuses, alerts=alerts, writes=tx.writes)

    def process_and_apply(self, obs: Observation) -> StepResult:
        result = self.process(obs)
        self.apply(result)
        return result

    def _process(self, obs: Observation) -> StepResult:
        cfg = self.cfg
        w = cfg.window_s
        start = tumbling_start(obs.ts, w)
        st = self.channel_state(obs.channel)
        current = st["current"]
        if current is not None and start <= current - cfg.retention_windows * w:
            return StepResult("late")  # its window (and dedup set) is gone: counting it would double count

        h = post_hash(obs.post_id)
        dkey = _dkey(obs.channel, start, int(h[:8], 16) % cfg.dedup_shards)
        seen = self._s.get(dkey) or []
        if h in seen:
            return StepResult("duplicate")
        self._s[dkey] = [*seen, h]

        if current is not None and start < current:
            self._baseline_cache.pop(obs.channel, None)  # a late post changed an earlier window
        tw = self.window(obs.channel, start)
        tw.add(obs)
        self._s[_wkey(obs.channel, "T", w, start)] = tw.to_dict()
        for hs in hopping_starts(obs.ts, cfg.hop_size_s, cfg.hop_step_s):
            hw = self.window(obs.channel, hs, hopping=True)
            hw.add(obs)
            self._s[_wkey(obs.channel, "H", cfg.hop_size_s, hs)] = hw.to_dict()

        alerts: list[AlertV1] = []
        changed = False
        if current is None:
            st = {**st, "current": start}
            changed = True
        elif start > current:
            # the watermark moved: every window from `current` to start-w is closed now
            self._close_windows(obs.channel, st, current, start, alerts)
            self._expire(obs.channel, current, start)
            st["current"] = start
            changed = True
        changed |= self._evaluate_open(obs.channel, st, tw, alerts)
        if changed:
            self._s[_ckey(obs.channel)] = st
        return StepResult("accepted", alerts)

    # -- detection -----------------------------------------------------------------------------
    def _cooled_down(self, det: dict[str, Any], start: int) -> bool:
        last = det["last_alert_start"]
        return last is None or start >= last + self.cfg.cooldown_windows * self.cfg.window_s

    def _evaluate_open(self, channel: str, st: dict[str, Any], tw: WindowStats, alerts: list[AlertV1]) -> bool:
        det = st["det"]["negative_spike"]
        cfg = self.spike_config(channel)
        if det["firing"] or not self._cooled_down(det, tw.start) or tw.count < cfg.min_count:
            return False
        base = self.baseline(channel, tw.start)
        ev = evaluate_negative(tw, base, cfg)
        if not ev.arm:
            return False
        alerts.append(self._negative_alert(channel, tw, base, ev))
        det.update(firing=True, last_alert_start=tw.start)
        # the incident's alert describes the emotion change too: no separate shift alert for it
        shift = st["det"]["emotion_shift"]
        shift["firing"] = True
        return True

    def _close_windows(self, channel: str, st: dict[str, Any], first: int, stop: int, alerts: list[AlertV1]) -> None:
        w = self.cfg.window_s
        # windows after the first closed one are empty (nothing arrived for them): one is enough
        for start in (first, first + w) if stop > first + w else (first,):
            win = self.window(channel, start)
            base = self.baseline(channel, start)
            neg_det, shift_det = st["det"]["negative_spike"], st["det"]["emotion_shift"]
            neg = evaluate_negative(win, base, self.spike_config(channel))
            if neg_det["firing"] and neg.quiet:
                neg_det["firing"] = False
            shift = evaluate_shift(win, base, self.cfg)
            if shift_det["firing"]:
                if shift.quiet and not neg_det["firing"]:
                    shift_det["firing"] = False
            elif shift.arm and self._cooled_down(shift_det, start) and not self._part_of_spike(neg_det, shift, start):
                alerts.append(self._shift_alert(channel, win, base, shift, neg))
                shift_det.update(firing=True, last_alert_start=start)

    def _part_of_spike(self, neg_det: dict[str, Any], shift: ShiftEvaluation, start: int) -> bool:
        into_negative = shift.dominant is not None and MIKELS_EMOTIONS[shift.dominant] in NEGATIVE_EMOTIONS
        return into_negative and (neg_det["firing"] or not self._cooled_down(neg_det, start))

    def _expire(self, channel: str, old_current: int, new_current: int) -> None:
        """Drop windows and dedup sets that fell out of retention (tombstones in the changelog).

        Retained tumbling windows start after ``current - retention_windows * window_s``; the ones
        that existed before the move all start in ``(old - R*w, old]``, so at most R are deleted.
        """
        cfg = self.cfg
        w, step, hop = cfg.window_s, cfg.hop_step_s, cfg.hop_size_s
        lo = old_current - cfg.retention_windows * w
        hi = min(new_current - cfg.retention_windows * w, old_current)
        for s in range(lo + w, hi + w, w):
            self._delete(_wkey(channel, "T", w, s))
            for shard in range(cfg.dedup_shards):
                self._delete(_dkey(channel, s, shard))
        # hopping windows that now lie wholly before the first retained tumbling window
        first = (lo + w - hop) // step * step + step
        for s in range(first, hi + w - hop + 1, step):
            self._delete(_wkey(channel, "H", hop, s))

    def _delete(self, key: str) -> None:
        if key in self._s:
            del self._s[key]

    # -- alerts --------------------------------------------------------------------------------
    def _alert(self, channel: str, kind: AlertKind, win: WindowStats, **kw: Any) -> AlertV1:
        return AlertV1(
            alert_id=alert_id(channel, kind, win.start),
            channel=channel,
            kind=kind,
            window_start=datetime.fromtimestamp(win.start, tz=UTC),
            window_end=datetime.fromtimestamp(win.end, tz=UTC),
            created_at=self._now(),
            posts_in_window=win.count,
            negative_in_window=win.negative,
            observed_negative_share=min(1.0, max(0.0, win.negative_share)),
            **kw,
        )

    def _negative_alert(self, channel: str, win: WindowStats, base: WindowStats, ev: NegativeEvaluation) -> AlertV1:
        dom = MIKELS_EMOTIONS[win.dominant]  # type: ignore[index]
        prev = MIKELS_EMOTIONS[base.dominant] if base.dominant is not None else None
        return self._alert(
            channel,
            "negative_spike",
            win,
            baseline_negative_share=min(1.0, max(0.0, ev.baseline_share)),
            p_value=min(1.0, max(0.0, ev.p_value)),
            effect_size=round(ev.effect, 6),
            dominant_emotion=dom,
            previous_dominant_emotion=prev,
            message=(
                f"negative share {ev.observed_share:.0%} of {win.count} posts in {channel} "
                f"vs baseline {ev.baseline_share:.0%} (p={ev.p_value:.2g})"
            ),
        )

    def _shift_alert(
        self, channel: str, win: WindowStats, base: WindowStats, ev: ShiftEvaluation, neg: NegativeEvaluation
    ) -> AlertV1:
        dom = MIKELS_EMOTIONS[ev.dominant]  # type: ignore[index]
        prev = MIKELS_EMOTIONS[ev.previous]  # type: ignore[index]
        return self._alert(
            channel,
            "emotion_shift",
            win,
            baseline_negative_share=min(1.0, max(0.0, neg.baseline_share)),
            p_value=min(1.0, max(0.0, ev.p_value)),
            effect_size=round(ev.effect, 6),
            dominant_emotion=dom,
            previous_dominant_emotion=prev,
            message=(
                f"dominant emotion in {channel} shifted from {prev} to {dom} ({win.count} posts, p={ev.p_value:.2g})"
            ),
        )

    # -- views ---------------------------------------------------------------------------------
    def windows_view(self, channel: str) -> dict[str, Any]:
        """Current tumbling and hopping windows of a channel (for an HTTP view / debugging)."""
        st = self.channel_state(channel)
        cur = st["current"]
        if cur is None:
            return {"channel": channel, "tumbling": [], "hopping": [], "detectors": st["det"]}
        cfg = self.cfg
        tumbling = [self.window(channel, cur - i * cfg.window_s) for i in range(cfg.baseline_windows, -1, -1)]
        hop = [
            self.window(channel, s, hopping=True)
            for s in range(cur - cfg.hop_size_s, cur + cfg.window_s, cfg.hop_step_s)
        ]
        return {
            "channel": channel,
            "tumbling": [w.summary() for w in tumbling if w.count],
            "hopping": [w.summary() for w in hop if w.count],
            "detectors": st["det"],
        }
