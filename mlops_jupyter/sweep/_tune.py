"""Ray Tune callback and stopper that connect a running Tuner to the cell (imports ray.tune)."""

from __future__ import annotations

import time

import ray
from ray import tune
from ray.tune.result import AUTO_RESULT_KEYS

SKIP_KEYS = set(AUTO_RESULT_KEYS) | {"done", "trial_id", "experiment_tag", "should_checkpoint"}


@ray.remote(num_cpus=0)
class _ChannelActor:
    def __init__(self):
        self.events, self.stop = [], False

    def put(self, event):
        self.events.append(event)

    def drain(self):
        out, self.events = self.events, []
        return out

    def request_stop(self):
        self.stop = True

    def stopped(self):
        return self.stop


class RemoteChannel:
    """The same over Ray Client, where the Tuner runs on the cluster: a small actor in between."""

    def __init__(self):
        self.actor = _ChannelActor.remote()

    def put(self, event) -> None:
        self.actor.put.remote(event)

    def drain(self) -> list:
        return ray.get(self.actor.drain.remote())

    def request_stop(self) -> None:
        ray.get(self.actor.request_stop.remote())

    def stopped(self) -> bool:
        return ray.get(self.actor.stopped.remote())

    def close(self) -> None:
        ray.kill(self.actor)


def _error_text(trial) -> str:
    try:
        err = trial.get_error()
        return str(err) if err is not None else (trial.error_message or "")
    except Exception:  # noqa: BLE001 - the error file may be on another node's disk
        return getattr(trial, "error_message", "") or "the trial's worker failed"


class Events(tune.Callback):
    def __init__(self, channel):
        self.channel = channel

    def on_trial_start(self, iteration, trials, trial, **info):
        self.channel.put(("start", trial.trial_id, dict(trial.config), time.time()))

    def on_trial_result(self, iteration, trials, trial, result, **info):
        keep = {k: v for k, v in result.items() if k not in SKIP_KEYS}
        self.channel.put(("result", trial.trial_id, keep, time.time()))

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.channel.put(("complete", trial.trial_id, None, time.time()))

    def on_trial_recover(self, iteration, trials, trial, **info):
        self.channel.put(("recover", trial.trial_id, _error_text(trial), time.time()))

    def on_trial_error(self, iteration, trials, trial, **info):
        self.channel.put(("error", trial.trial_id, _error_text(trial), time.time()))


class Stop(tune.Stopper):
    """Ends the whole sweep when the cell is interrupted."""

    def __init__(self, channel):
        self.channel = channel

    def __call__(self, trial_id, result):
        return False

    def stop_all(self):
        return self.channel.stopped()
