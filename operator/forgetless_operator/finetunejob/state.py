"""The working state of one reconcile pass of a FineTuneJob (`JobPass`): the job, what was observed,
the status being written, the actions and events decided so far, and the small tools every step
uses. The steps live in reconcile.py, stages.py and features/; each takes the pass."""

from __future__ import annotations

from datetime import datetime
from typing import Callable

from forgetless.api.schema import FineTuneJobSpec
from forgetless.timefmt import fmt_time
from forgetless.vocabulary import FAILED, READY

from forgetless_operator.finetunejob.children import OperatorConfig
from forgetless_operator.finetunejob.decision import Action, Event, Observed
from forgetless_operator.kit.status import condition, set_condition, short, status_of

CacheKeyFn = Callable[[FineTuneJobSpec], "str | None"]


class JobPass:
    """One reconcile pass: mutable working state, so the steps stay short."""

    def __init__(self, ftj: dict, observed: Observed, now: datetime, config: OperatorConfig,
                 cache_key: CacheKeyFn) -> None:
        self.ftj = ftj
        self.meta = ftj["metadata"]
        self.name = self.meta["name"]
        self.namespace = self.meta["namespace"]
        self.uid = self.meta["uid"]
        self.observed = observed
        self.now = now
        self.now_s = fmt_time(now)
        self.config = config
        self.cache_key = cache_key
        self.old = status_of(ftj)
        self.status = status_of(ftj)
        self.status["observedGeneration"] = self.meta.get("generation")
        self.status.setdefault("stages", {})
        self.actions: list[Action] = []
        self.events: list[Event] = []
        self.reason: tuple[str, str] | None = None  # a blocking condition (reason, message) while Pending

    def event(self, reason: str, message: str, warning: bool = False) -> None:
        self.events.append(Event("Warning" if warning else "Normal", reason, short(message)))

    def set_condition(self, type_: str, status: str, reason: str, message: str) -> None:
        set_condition(self.status, type_, status, reason, message, self.now_s, self.meta.get("generation"))

    def condition(self, type_: str) -> dict | None:
        return condition(self.status, type_)

    def stage(self, stage: str) -> dict:
        """The stage's record in status.stages (created Pending)."""
        return self.status["stages"].setdefault(stage, {"phase": "Pending", "attempts": 0})

    def fail(self, reason: str, message: str) -> None:
        self.status["phase"] = "Failed"
        self.status["completionTime"] = self.now_s
        self.status["message"] = short(message)
        self.set_condition(FAILED, "True", reason, message)
        self.event(reason, message, warning=True)

    def reject(self, reason: str, message: str) -> None:
        """Not started and cannot start yet: a condition and (once per distinct problem) an event."""
        self.status["phase"] = "Pending"
        self.status["message"] = short(message)
        self.reason = (reason, message)
        ready = condition(self.old, READY)
        if ready is None or ready.get("reason") != reason or ready.get("message") != short(message):
            self.event(reason, message, warning=True)
