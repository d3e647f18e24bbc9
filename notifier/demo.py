"""``notifier demo``: the real daemon against the built-in simulator, in one command.

No config, credentials or setup: a temporary store, a simulated campaign whose time
runs ten times faster than a real one (queue waits and calls of seconds, not
minutes), and every event printed to the terminal through the ``console://`` target.
"""

from __future__ import annotations

import os
import socket
import sys
import tempfile
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import anyio
from sqlalchemy.exc import SQLAlchemyError

from notifier.config import load_config
from notifier.daemon import Daemon, early_signals
from notifier.simulator import BlandSimulator
from notifier.store import Store, StoreError
from notifier.traffic import TrafficModel

DEMO_CONFIG = """\
[source]
base_url = "{base_url}"
api_key = "${{DEMO_API_KEY}}"
org_id = "{org_id}"
poll_interval = "1s"
unreachable_after = "10s"
fetch_details = true

[storage]
url = "sqlite:///demo.db"

[detect]
announce_existing = true
stuck_queued_after = "6s"
long_running_after = "40s"

[[conditions]]
name = "queue backlog"
metric = "queued"
above = 5
for = "3s"
group_by = ["pathway_id"]
inhibits = ["call.stuck_queued"]

[http]
listen = "{listen}"

[targets.console]
url = "console://"
min_interval = "0s"

[[rules]]
name = "everything"
events = ["*"]
targets = ["console"]
digest_after = 6
"""


def run_demo(seed: int | None = None, duration: float | None = None) -> int:
    model = TrafficModel(
        seed, time_scale=0.1, trickle_per_minute=3.0, burst_every=250.0, burst_size=(4, 9), backlog=(50.0, 10)
    )
    with tempfile.TemporaryDirectory(prefix="bland-notifier-demo-") as workdir, BlandSimulator(seed=seed) as sim:
        sim.drive(model)
        path = Path(workdir) / "notifier.toml"
        listen = _free_listen()
        path.write_text(DEMO_CONFIG.format(base_url=sim.base_url, org_id=sim.org_id, listen=listen))
        env = {**os.environ, "DEMO_API_KEY": sim.api_key, "STATE_DIRECTORY": workdir}
        config = load_config(path, env)
        print(
            f"bland-notifier demo: a simulated Bland API at {sim.base_url}, polled every second.\n"
            "Calls queue, start, get stuck (queued > 6s) and end; after 5s a backlog of 10 calls on one\n"
            "pathway fires a campaign-health condition (which holds back that pathway's stuck-call\n"
            "messages) until it drains. Every event prints below.\n"
            f"The console is at http://{listen}/ (read-only here: the demo sets no [http] token).\n"
            "Press Ctrl-C to stop.\n",
            flush=True,
        )
        daemon = Daemon(config, env)

        async def stop_after(seconds: float) -> None:
            await anyio.sleep(seconds)
            daemon.stop()

        async def main(stop_requested: Callable[[], bool]) -> None:
            async with anyio.create_task_group() as tg:
                if duration is not None:
                    tg.start_soon(stop_after, duration)
                await daemon.run(stop_requested)
                tg.cancel_scope.cancel()  # stopped by a signal before the duration was up

        # As `notifier run`: a Ctrl-C outside the daemon's own handling (while starting,
        # or a second one while it shuts down) stops it cleanly instead of a traceback.
        with early_signals() as stop_requested:
            anyio.run(main, stop_requested)
            _summary(config.storage.url, env)
    return 0


def _free_listen(preferred: int = 8464) -> str:
    """127.0.0.1:8464, or any free port when that one is taken (a second demo)."""
    for port in (preferred, 0):
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the listener binds
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return f"127.0.0.1:{probe.getsockname()[1]}"
    raise OSError("no free port on 127.0.0.1")


#: The words the cards use, in the order a call lives them.
_WORDS = {
    "call.appeared": "appeared",
    "call.started": "started",
    "call.status_changed": "changed status",
    "call.stuck_queued": "stuck in queue",
    "call.long_running": "running long",
    "call.disappeared": "ended",
    "source.unreachable": "API unreachable",
    "source.recovered": "API reachable",
    "condition.firing": "condition firing",
    "condition.resolved": "condition resolved",
}


def _summary(url: str, env: dict[str, str]) -> None:
    store = Store(url, env)
    try:
        events = Counter(e.type for e in store.events(limit=None))
        deliveries = Counter(d.status for d in store.deliveries())
    except (StoreError, SQLAlchemyError):  # stopped before the daemon had made its tables
        print("\nSummary\n  stopped before the first poll: nothing to show", flush=True)
        return
    finally:
        store.close()
    print("\nSummary", file=sys.stdout)
    for event_type, count in sorted(events.items(), key=lambda item: list(_WORDS).index(item[0])):
        print(f"  {_WORDS[event_type]:<20}{count:>5}   ({event_type})")
    print(f"  deliveries: {', '.join(f'{n} {s}' for s, n in sorted(deliveries.items())) or 'none'}", flush=True)
