"""record: what a run leaves behind, shared by run/, loop/ and cli/ -- a leaf that imports no stage.

    layout        runs/NNNN/'s files, the one runs/ listing, run ids never reused, run.lock, .running
    metrics       metrics.json: the signed run record, re-checked on the host
    identity      fingerprint (like is compared with like), snapshot of the editable set
    keys          the project's signing keys (named by the record that they signed)
    queue         a wave's queue: runs/NNNN/queue.json, the saved snapshot, every state change, a lost entry rebuilt
    exits         ./run.sh's exit codes; HarnessError, RunBusy
    flows         the flow table: every path and channel, its writer and its readers

The front door: `from autoresearch.record import RunMetrics, Layout, ...`. Names load on first use
(PEP 562), because the guard's hot path imports record.flows, which must not pull pydantic in.
"""
from __future__ import annotations

from ..frontdoor import lazy

# module -> the names it lends the front door
_MODULES: dict[str, tuple[str, ...]] = {
    "layout": ("CHECKPOINT", "EVAL_LOG", "LOG_FILE", "Layout", "RUNNING", "RUNS_DIR", "RUN_COUNTER", "RUN_LOCK",
        "STATE_DIR", "allocate_run_dir", "clean_out", "eval_log", "final_log", "hold_running", "inside",
        "lock_held", "mark_holder", "new_log", "private_dir", "reserve_run_id", "state_folder", "state_id", "run_dirs",
        "run_ids", "run_lock", "sweep_scratch", "take_run_id"),
    "metrics": ("KEY_MISSING", "METRICS_FILE", "RECORD_ALTERED", "RunMetrics", "host_check", "load_verified",
        "read_verified"),
    "identity": ("AGENT_CLOCK", "Fingerprint", "code_files", "data_version", "device_class", "program_code",
        "snapshot", "snapshot_at", "snapshot_files", "snapshot_of"),
    "keys": ("dump_export", "export_keys", "import_keys", "key_dir", "key_problem", "new_key", "project_keys",
        "signing_key"),
    "queue": ("QUEUE_FILE", "QueueEntry", "SNAPSHOT_DIR", "cancel_wave", "claim", "entries", "finish",
        "live_entries", "pending_record", "read_entry", "runner_live", "saved_files", "set_node", "settle_lost",
        "slot_free", "slot_lock", "snapshot_intact"),
    "exits": ("DISK_FULL_MARK", "HarnessError", "RunBusy", "RunExit", "for_status"),
}
# names that would collide at the front door: keys.identity (the record.identity module), a private helper
_RENAMED = {"key_identity": ("keys", "identity"), "mac": ("metrics", "_mac")}
_EXPORTS: dict[str, tuple[str, str]] = {**{n: (m, n) for m, names in _MODULES.items() for n in names}, **_RENAMED}
__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy(__name__, _EXPORTS)
