"""Run the real analyzer worker with tiny models, for crash tests (`python -m tests.support.tiny_worker`).

Settings come from MOODWATCH_* variables. MOODWATCH_TEST_KILL_AFTER_STORES=N makes the process
SIGKILL itself right after the N-th acknowledged store write, i.e. after the documents are in
Elasticsearch but before the offsets are committed: the worst moment for duplicates.
"""

from __future__ import annotations

import os
import signal

from tests.support.tiny import tiny_analyzer
from workers.analyzer.settings import AnalyzerSettings as Settings
from workers.analyzer.wiring import build_worker
from workers.common.logs import configure_logging


class KillingStore:
    def __init__(self, store, after: int) -> None:
        self.store, self.after, self.writes = store, after, 0

    def write(self, results):
        self.store.write(results)
        self.writes += 1
        if self.writes >= self.after:
            os.kill(os.getpid(), signal.SIGKILL)


def main() -> None:
    settings = Settings()
    configure_logging(settings.log_level, True)
    worker = build_worker(settings, analyzer=tiny_analyzer(regions=False), create_topics=False)
    kill_after = int(os.environ.get("MOODWATCH_TEST_KILL_AFTER_STORES", "0"))
    if kill_after:
        worker.store = KillingStore(worker.store, kill_after)
    worker.install_signal_handlers()
    worker.run(idle_exit_s=float(os.environ.get("MOODWATCH_TEST_IDLE_EXIT_S", "8")))


if __name__ == "__main__":
    main()
