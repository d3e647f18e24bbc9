"""Conditions end to end: the daemon as a process, a simulated backlog, a receiver."""

from __future__ import annotations

import json
import time
from pathlib import Path

from notifier.simulator import BlandSimulator, wire_call
from tests.conftest import DaemonProcess, cli_env, run_cli, wait_for, write_config
from tests.receivers import Receiver
from tests.test_quieting import deliveries


def test_a_backlog_on_one_pathway_fires_once_inhibits_its_stuck_calls_only_and_resolves(
    tmp_path: Path, sim: BlandSimulator
) -> None:
    config = """
[detect]
announce_existing = false
stuck_queued_after = "1s"
[[conditions]]
name = "backlog"
metric = "queued"
above = 2
group_by = ["pathway_id"]
inhibits = ["call.stuck_queued"]
[targets.crm]
url = "{url}"
[[rules]]
name = "all"
events = ["condition.*", "call.stuck_queued"]
targets = ["crm"]
"""
    with Receiver() as rx:
        write_config(tmp_path, sim, config.format(url=rx.url))
        env = cli_env(sim, tmp_path)
        backlog = [wire_call(f"b{i}", pathway_id="pw-7") for i in range(4)]
        sim.set_calls([*backlog, wire_call("lone", pathway_id="pw-8")])
        daemon = DaemonProcess(tmp_path, env)

        def kinds() -> list[tuple[str, str]]:
            return [
                (r.json["type"], (r.json["data"].get("call") or {}).get("call_id") or r.json["data"]["condition"])
                for r in rx.received
            ]

        wait_for(lambda: ("call.stuck_queued", "lone") in kinds())
        wait_for(lambda: len(deliveries(env, tmp_path, "--status", "inhibited")) == 4)
        assert kinds().count(("condition.firing", "backlog")) == 1
        firing = next(r.json["data"] for r in rx.received if r.json["type"] == "condition.firing")
        assert firing["group"] == {"pathway_id": "pw-7"} and firing["value"] == 4.0 and firing["threshold"] == 2.0
        assert {d["quieted_by"] for d in deliveries(env, tmp_path, "--status", "inhibited")} == {"backlog"}
        assert not [k for k in kinds() if k[0] == "call.stuck_queued" and k[1].startswith("b")]
        status = json.loads(run_cli(["status", "--json"], env, tmp_path).stdout)
        assert [(c["condition"], c["group"], c["value"]) for c in status["conditions"]] == [
            ("backlog", {"pathway_id": "pw-7"}, 4.0)
        ]
        assert "firing: backlog pathway_id=pw-7 (default): 4 since " in run_cli(["status"], env, tmp_path).stdout
        routed = run_cli(["route-test", "call.stuck_queued", "pathway_id=pw-7", "--json"], env, tmp_path)
        assert [(t["outcome"], t.get("by")) for t in json.loads(routed.stdout)["targets"]] == [("inhibited", "backlog")]
        other = run_cli(["route-test", "call.stuck_queued", "pathway_id=pw-8", "--json"], env, tmp_path)
        assert [t["outcome"] for t in json.loads(other.stdout)["targets"]] == ["send"]
        sim.set_calls([wire_call("lone", pathway_id="pw-8")])  # the backlog drains
        wait_for(lambda: ("condition.resolved", "backlog") in kinds())
        resolved = next(r.json["data"] for r in rx.received if r.json["type"] == "condition.resolved")
        assert resolved["group"] == {"pathway_id": "pw-7"} and resolved["value"] == 0.0
        assert kinds().count(("condition.firing", "backlog")) == 1
        assert daemon.stop() == 0
        # the condition's state was committed: a restart announces nothing again
        daemon = DaemonProcess(tmp_path, env)
        time.sleep(1.0)
        assert kinds().count(("condition.resolved", "backlog")) == 1
        assert daemon.stop() == 0
