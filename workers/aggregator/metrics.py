"""The aggregator's Prometheus metrics (names and labels are what the dashboards and alert rules query)."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


@dataclass
class AggregatorMetrics:
    registry: CollectorRegistry
    records: Counter
    observations: Counter
    alerts: Counter
    step_duration: Histogram
    end_offset_corrections: Counter
    watermark: Gauge
    state_writes: Counter
    offset_jumps: Counter
    repaired: Counter
    redeliveries: Counter
    event_time_clamped: Counter
    stalled_seconds: Gauge
    stall_exits: Counter

    @classmethod
    def create(cls, registry: CollectorRegistry | None = None) -> AggregatorMetrics:
        registry = registry if registry is not None else CollectorRegistry()
        return cls(
            registry=registry,
            records=Counter(
                "moodwatch_aggregator_records",
                "Records read by the aggregator by topic role (results, by_channel) and outcome (ok, invalid)",
                ["source", "outcome"],
                registry=registry,
            ),
            observations=Counter(
                "moodwatch_aggregator_observations",
                "Posts applied to windows by status (accepted, duplicate, late)",
                ["status"],
                registry=registry,
            ),
            alerts=Counter("moodwatch_alerts_raised", "Alerts raised by kind", ["kind"], registry=registry),
            step_duration=Histogram(
                "moodwatch_aggregator_step_seconds",
                "Time per post to apply a batch to the windows and run detection (batch time / posts)",
                buckets=(0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5),
                registry=registry,
            ),
            end_offset_corrections=Counter(
                "moodwatch_aggregator_end_offset_corrections",
                "Changelog partitions whose broker-reported end offset was short and was corrected before recovery",
                registry=registry,
            ),
            watermark=Gauge(
                "moodwatch_aggregator_event_time_seconds",
                "Newest event time (created_at, epoch seconds) applied by this worker",
                registry=registry,
            ),
            offset_jumps=Counter(
                "moodwatch_aggregator_offset_jumps",
                "Forward offset jumps (skipped records) seen by an agent, by source topic role",
                ["source"],
                registry=registry,
            ),
            repaired=Counter(
                "moodwatch_aggregator_repaired_records",
                "Skipped records re-read and processed after an offset jump",
                ["source"],
                registry=registry,
            ),
            redeliveries=Counter(
                "moodwatch_aggregator_redeliveries",
                "Records delivered again at or below an offset already seen (harmless: deduplicated)",
                ["source"],
                registry=registry,
            ),
            event_time_clamped=Counter(
                "moodwatch_aggregator_event_time_clamped",
                "Results whose created_at was outside the event-time bounds and was placed at analyzed_at, by reason",
                ["reason"],
                registry=registry,
            ),
            state_writes=Counter(
                "moodwatch_aggregator_state_writes",
                "Table writes (changelog records, tombstones included) after coalescing each batch",
                registry=registry,
            ),
            stalled_seconds=Gauge(
                "moodwatch_aggregator_stalled_seconds",
                "Longest time an input partition has had records waiting while the agents took none (0: none)",
                registry=registry,
            ),
            stall_exits=Counter(
                "moodwatch_aggregator_stall_exits",
                "Exits with code 75 because records waited longer than MOODWATCH_AGGREGATOR_STALL_EXIT_S untaken",
                registry=registry,
            ),
        )
