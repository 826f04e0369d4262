"""What a run folder's record means for a launch of a config into it: a finished run of this same
config (skip it), nothing worth keeping (train), or a record that must not be touched."""

from __future__ import annotations

from pathlib import Path

from gradclip.checks import ConfigError
from gradclip.config import result_config
from gradclip.records import CONFIG_FILE, RecordError, RunState, process_identity, remedy


def existing_record(state: RunState, run_dir: Path, config: dict, rerun: bool) -> dict | None:
    """The summary of a finished run of this same config (``state``: what run_dir holds), or
    None: train afresh.

    Nothing is overwritten that a relaunch should keep: a finished record of a different config
    is bad input (re-launching after a change of defaults must not return stale results), a
    record that cannot be read is an error until ``rerun=true``, and a record that a live
    process is writing is never touched. Interrupted, dead and failed runs train again.
    """
    if state.corrupt and not rerun:
        raise RecordError(state.reason.removeprefix("corrupt record: "))
    if state.status == "running" and state.summary.get("process") != process_identity():
        raise RecordError(f"{run_dir} is being written by a live process ({state.reason}): not starting a "
                          "second copy; wait for it or stop it")
    if rerun or not state.finished:
        return None
    if state.config is None:
        raise RecordError(f"{run_dir} holds a finished summary but no {CONFIG_FILE}: {remedy(run_dir)}")
    recorded, current = result_config(state.config), result_config(config)
    differ = sorted(key for key in recorded.keys() | current.keys() if recorded.get(key) != current.get(key))
    if differ:
        raise ConfigError(f"{run_dir} holds a finished run of another config (differing keys: "
                          f"{', '.join(differ)}); use rerun=true to replace it, or another name= or output_root=")
    return state.summary
