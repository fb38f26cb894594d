"""The real aggregator with chaos switches: `python -m tests.support.chaos_aggregator -A workers.aggregator worker ...`.

Takes faust's own command line (it is `faust`, with faust's classes patched before the app is built);
the app, its settings (MOODWATCH_*) and its fixes are the production ones. Environment:

- MOODWATCH_CHAOS_NEVER_RESUME_TOPIC=NAME: faust never resumes the partitions of topic NAME, so the
  worker gets ready ("Worker ready") and then takes nothing from them, whatever waits there: the
  stall of issue 12 as it looked from outside.
- MOODWATCH_CHAOS_FETCH_WAIT_S=S: each of faust's fetches waits up to S seconds for records (faust:
  1 s), so the fetch issued while the table recovery reads the changelog is still waiting when the
  stream partitions are seeked to their committed offsets.
- MOODWATCH_CHAOS_SLOW_SEEK_S=S: faust's consumer thread waits S seconds after that seek, before
  faust resumes the stream partitions (on a loaded machine the seek of one partition can come well
  before the others'). With both, issue 12's stall happened on every restart without
  faust_fixes.SnapshotFetchConsumerThread: the waiting fetch took the records fetched after the
  seek while no partition was active, and faust dropped them.
- MOODWATCH_CHAOS_UNFIX_SNAPSHOT=1: undo that fix (faust's own fetch), to see the stall happen.
"""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any

NEVER_RESUME_ENV = "MOODWATCH_CHAOS_NEVER_RESUME_TOPIC"
SLOW_SEEK_ENV = "MOODWATCH_CHAOS_SLOW_SEEK_S"
FETCH_WAIT_ENV = "MOODWATCH_CHAOS_FETCH_WAIT_S"


def never_resume(topic: str) -> None:
    from faust.transport.consumer import Consumer

    resume = Consumer.resume_partitions

    def resume_partitions(self: Any, tps: Any) -> None:
        resume(self, {tp for tp in tps if tp.topic != topic})

    Consumer.resume_partitions = resume_partitions  # type: ignore[method-assign]


def slow_seek(seconds: float) -> None:
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    async def seek_to_committed(self: Any) -> Any:
        async def seek_then_wait() -> Any:
            offsets = await self._ensure_consumer().seek_to_committed()
            await asyncio.sleep(seconds)  # in the consumer thread's loop: its fetches go on meanwhile
            return offsets

        return await self.call_thread(seek_then_wait)

    AIOKafkaConsumerThread.seek_to_committed = seek_to_committed  # type: ignore[method-assign]


def long_fetch_wait(seconds: float) -> None:
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    getmany = AIOKafkaConsumerThread.getmany

    async def waiting_getmany(self: Any, active_partitions: Any, timeout: float) -> Any:
        return await getmany(self, active_partitions, seconds)

    AIOKafkaConsumerThread.getmany = waiting_getmany  # type: ignore[method-assign]


def unfix_snapshot() -> None:
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    from workers.aggregator.faust_fixes import SnapshotFetchConsumerThread

    SnapshotFetchConsumerThread.getmany = AIOKafkaConsumerThread.getmany  # type: ignore[method-assign]


def main() -> None:
    if wait := float(os.environ.get(FETCH_WAIT_ENV) or 0):
        long_fetch_wait(wait)
    if os.environ.get("MOODWATCH_CHAOS_UNFIX_SNAPSHOT"):
        unfix_snapshot()
    if topic := os.environ.get(NEVER_RESUME_ENV):
        never_resume(topic)
    if seconds := float(os.environ.get(SLOW_SEEK_ENV) or 0):
        slow_seek(seconds)
    from faust.cli.faust import cli

    sys.argv[0] = "faust"
    cli()


if __name__ == "__main__":
    main()
