"""The FineTuneSweep API: a forgetting-aware policy search over FineTuneJob specs.

A sweep holds a FineTuneJob spec (`spec.template`) and a search space over a few policy fields
(`spec.searchSpace`, a list of dimensions named by their dotted wire path, e.g.
`method.lora.r`). Each candidate policy is the template with one value per dimension applied
(`candidate_spec`); every candidate is a FineTuneJob spec validated like any other, so a value the
FineTuneJob schema rejects (`r: 0`) is rejected here, naming the dimension. The strategy
(`grid`, `random`, `successiveHalving`) decides which candidates run, and the objective picks the
best trial: the gate must pass, then the best task score, ties broken by cost (see
forgetless.search). The search itself is pure and lives in `forgetless.search`; this module is
only the wire format, built with schema.py's ApiModel / Rule machinery so the same rules reach
the CRD as CEL and `forgetless validate` as pydantic errors.
"""

from __future__ import annotations

import copy
import math
from typing import Annotated, Any, Literal, Optional

from pydantic import Field, ValidationError, model_validator
from pydantic_core import PydanticCustomError

from forgetless.api.schema import (
    API_VERSION,  # noqa: F401 - the sweep kind shares the group version: forgetless.api.sweep.API_VERSION
    DNS_LABEL,
    GROUP,
    MAX_JOB_NAME_LENGTH,
    VERSION,
    ApiModel,
    Condition,
    FineTuneJobSpec,
    Fraction,
    ManifestModel,
    ObjectMeta,
    PromotedModelStatus,
    Rule,
)

KIND = "FineTuneSweep"
PLURAL = "finetunesweeps"
SINGULAR = "finetunesweep"
SHORT_NAMES = ["fts"]

MAX_CANDIDATES = 1000
"""Largest expanded space (grid product + include); trial indices stay below it (`-t999`)."""
TRIAL_SUFFIX_LENGTH = len(f"-t{MAX_CANDIDATES - 1}")
MAX_SWEEP_NAME_LENGTH = MAX_JOB_NAME_LENGTH - TRIAL_SUFFIX_LENGTH
"""Trials are FineTuneJobs named `<sweep>-t<index>`: the sweep's name leaves room for the suffix."""

SEARCHABLE_FIELDS: dict[str, type] = {
    "method.lora.r": int,
    "method.lora.alpha": float,
    "method.lora.dropout": float,
    "mitigation.dataMixing.generalFraction": float,
    "mitigation.ewc.lambda": float,
    "training.learningRate": float,
    "training.epochs": float,
    "training.batchSize": int,
    "training.warmupRatio": float,
}
"""Policy fields a sweep may vary (dotted wire paths into the FineTuneJob spec) and their type.
Setting `mitigation.ewc.lambda` on a template without EWC turns EWC on for that candidate."""

SearchableField = Literal[tuple(SEARCHABLE_FIELDS)]  # type: ignore[valid-type]


def _ranged(m: "SearchDimension") -> bool:
    return m.min is not None


class SearchDimension(ApiModel):
    """One dimension: a list of `values`, or a range `{min, max}` with a grid `step` or `log: true`
    (random sampling on a log scale). A range without step is sampled uniformly by `random`."""

    RULES = (
        Rule("has(self.values) != has(self.min)", lambda m: (m.values is not None) != _ranged(m),
             "set either values or a range (min and max)"),
        Rule("has(self.min) == has(self.max)", lambda m: (m.min is None) == (m.max is None),
             "a range needs both min and max", ".max"),
        Rule("!has(self.min) || !has(self.max) || self.min <= self.max",
             lambda m: m.min is None or m.max is None or m.min <= m.max, "min must not exceed max", ".min"),
        Rule("!has(self.step) || has(self.min)", lambda m: m.step is None or _ranged(m),
             "step needs a range (min and max)", ".step"),
        Rule("!has(self.log) || !self.log || has(self.min) && self.min > 0.0",
             lambda m: not m.log or (m.min is not None and m.min > 0), "log needs a range with min above 0", ".log"),
        Rule("!has(self.log) || !self.log || !has(self.step)", lambda m: not (m.log and m.step is not None),
             "log and step exclude each other: list the values for a log grid", ".step"),
    )

    field: SearchableField = Field(description="Dotted wire path of the policy field, e.g. `method.lora.r`.")
    values: Optional[Annotated[list[float], Field(min_length=1, max_length=64)]] = Field(
        default=None, description="The values to try."
    )
    min: Optional[float] = Field(default=None, description="Range: smallest value.")
    max: Optional[float] = Field(default=None, description="Range: largest value.")
    step: Optional[Annotated[float, Field(gt=0)]] = Field(
        default=None, description="Range: grid step (min, min+step, ... up to max)."
    )
    log: bool = Field(default=False, description="Range: random strategy samples on a log scale.")

    def discrete(self) -> bool:
        return self.values is not None or self.step is not None

    def points(self) -> list[Any]:
        """The dimension's grid points (values, or min..max by step), typed for the field."""
        if self.values is not None:
            raw = list(self.values)
        elif self.step is not None:
            count = int(math.floor((self.max - self.min) / self.step + 1e-9)) + 1
            raw = [round(self.min + i * self.step, 12) for i in range(min(count, MAX_CANDIDATES + 1))]
        else:
            raw = [self.min, self.max]
        return [typed(self.field, v) for v in raw]


def typed(field: str, value: Any) -> Any:
    """A value as the field's type: 16.0 -> 16 for an integer field (2.5 stays and is rejected)."""
    if SEARCHABLE_FIELDS.get(field) is int and isinstance(value, float) and value.is_integer():
        return int(value)
    return value


class StrategySpec(ApiModel):
    RULES = (
        Rule("!has(self.type) || self.type != 'random' || has(self.maxTrials)",
             lambda m: m.type != "random" or m.max_trials is not None,
             "random needs maxTrials (how many candidates to sample)", ".maxTrials"),
    )

    type: Literal["grid", "random", "successiveHalving"] = Field(
        default="grid",
        description="grid: every candidate; random: maxTrials candidates sampled with seed; successiveHalving: "
        "all candidates on a small share of their epochs, the best 1/eta continue from their checkpoint "
        "on eta times more, until the survivors train their full epochs.",
    )
    max_trials: Optional[Annotated[int, Field(ge=1, le=MAX_CANDIDATES)]] = Field(
        default=None, description="random (and successiveHalving over ranges without step): candidates sampled."
    )
    seed: Annotated[int, Field(ge=0, le=2**31 - 1)] = Field(default=0, description="Seed of random sampling.")
    eta: Annotated[int, Field(ge=2, le=10)] = Field(
        default=3, description="successiveHalving: keep 1/eta of the trials per rung; each rung trains eta× longer."
    )
    min_epochs: Annotated[float, Field(gt=0, le=1000)] = Field(
        default=1.0, description="successiveHalving: the shortest rung trains at least this many epochs "
        "(never more than the candidate's own epochs).",
    )


class ObjectiveSpec(ApiModel):
    min_task_score: Optional[Fraction] = Field(
        default=None, description="A trial qualifies only with at least this task score (0-1)."
    )
    tie_tolerance: Annotated[float, Field(ge=0.0, le=1.0)] = Field(
        default=0.005, description="Task scores within this of the best count as a tie; the cheaper trial wins "
        "(cost = trainable parameters × tokens trained).",
    )


def _set_path(document: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = document
    for part in parents:
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    node[leaf] = value


def candidate_spec(template: FineTuneJobSpec | dict[str, Any], policy: dict[str, Any]) -> FineTuneJobSpec:
    """The trial's FineTuneJob spec: the template with each `field: value` of `policy` applied.
    Raises pydantic.ValidationError when the result is not a valid FineTuneJob spec."""
    wire = template.to_wire() if isinstance(template, FineTuneJobSpec) else copy.deepcopy(template)
    for field, value in policy.items():
        _set_path(wire, field, typed(field, value))
    return FineTuneJobSpec.model_validate(wire)


def trial_name(sweep: str, index: int) -> str:
    """`<sweep>-t<index>`; index is the candidate's position in the expanded space."""
    return f"{sweep}-t{index}"


BEST_SUFFIX = "-best"


def best_job_name(sweep: str) -> str:
    """`<sweep>-best`: the FineTuneJob that re-runs the best trial's policy to promote it (in a cluster
    and on a laptop alike)."""
    return f"{sweep}{BEST_SUFFIX}"


def _first_error(exc: ValidationError) -> str:
    from forgetless.api.manifests import describe_validation_error

    return describe_validation_error(exc, FineTuneJobSpec)[0]


def _reject(field: str, message: str) -> PydanticCustomError:
    return PydanticCustomError("forgetless_rule", message.replace("{", "{{").replace("}", "}}"), {"field": field})


GRID_NEEDS_DISCRETE = ("(has(self.strategy) && has(self.strategy.type) && self.strategy.type != 'grid')"
                       " || self.searchSpace.all(d, has(d.values) || has(d.step))")


class FineTuneSweepSpec(ApiModel):
    RULES = (
        Rule("self.searchSpace.all(d, self.searchSpace.exists_one(e, e.field == d.field))",
             lambda m: len({d.field for d in m.search_space}) == len(m.search_space),
             "each field may appear in searchSpace once", ".searchSpace"),
        Rule(GRID_NEEDS_DISCRETE,
             lambda m: m.strategy.type != "grid" or all(d.discrete() for d in m.search_space),
             "strategy grid needs values or a step for every searchSpace dimension (or use strategy random)",
             ".searchSpace"),
        Rule("!has(self.strategy) || !has(self.strategy.type) || self.strategy.type != 'successiveHalving'"
             " || has(self.strategy.maxTrials) || self.searchSpace.all(d, has(d.values) || has(d.step))",
             lambda m: m.strategy.type != "successiveHalving" or m.strategy.max_trials is not None
             or all(d.discrete() for d in m.search_space),
             "successiveHalving over a range without step needs strategy.maxTrials", ".strategy"),
    )

    template: FineTuneJobSpec = Field(description="The FineTuneJob spec every trial starts from.")
    search_space: Annotated[list[SearchDimension], Field(min_length=1, max_length=16)] = Field(
        description="Policy fields to vary; candidates are the product of the dimensions (grid) or samples (random)."
    )
    include: Annotated[list[dict[SearchableField, float]], Field(max_length=64)] = Field(  # type: ignore[valid-type]
        default_factory=list,
        description="Extra candidates tried besides the space (e.g. the current production policy, to compare "
        "against): `{field: value}` maps, after the expanded space in trial order.",
    )
    strategy: StrategySpec = Field(default_factory=StrategySpec)
    objective: ObjectiveSpec = Field(default_factory=ObjectiveSpec)
    max_parallel: Annotated[int, Field(ge=1, le=64)] = Field(default=1, description="Trials running at once.")
    promote: Literal["best", "none"] = Field(
        default="best", description="best: only the best trial's model is promoted (trials run with promote false)."
    )

    @model_validator(mode="after")
    def _check_values(self) -> "FineTuneSweepSpec":
        """Every value of every dimension, applied alone to the template, gives a valid FineTuneJob spec."""
        template = self.template.to_wire()
        size = 1
        for index, dimension in enumerate(self.search_space):
            points = dimension.points()
            if dimension.discrete():
                size *= len(points)
            for value in points:
                try:
                    candidate_spec(template, {dimension.field: value})
                except ValidationError as exc:
                    where = "values" if dimension.values is not None else "min"
                    raise _reject(f"searchSpace[{index}].{where}",
                                  f"{dimension.field} = {value!r} gives an invalid FineTuneJob: {_first_error(exc)}")
        for index, policy in enumerate(self.include):
            try:
                candidate_spec(template, policy)
            except ValidationError as exc:
                raise _reject(f"include[{index}]", f"gives an invalid FineTuneJob: {_first_error(exc)}")
        if self.strategy.type != "random" and size + len(self.include) > MAX_CANDIDATES:
            raise _reject("searchSpace", f"the space holds {size + len(self.include)} candidates, more than "
                          f"{MAX_CANDIDATES}: use fewer values, or strategy random with maxTrials")
        return self


# --------------------------------------------------------------------------- status

TRIAL_PHASES = ("Pending", "Running", "Succeeded", "Failed", "Pruned")
SWEEP_PHASES = ("Pending", "Running", "Succeeded", "Failed")


class TrialStatus(ApiModel):
    name: str
    index: int = Field(description="Position of the candidate in the expanded space.")
    policy: dict[str, float] = Field(default_factory=dict, description="The candidate's values, by field.")
    phase: Literal[TRIAL_PHASES] = "Pending"  # type: ignore[valid-type]
    rung: Optional[int] = Field(default=None, description="successiveHalving: the rung last run (0 = shortest).")
    epochs: Optional[float] = Field(default=None, description="Epochs trained so far.")
    task_score: Optional[float] = None
    mean_kept: Optional[float] = Field(default=None, description="Share of the base model's mean general score kept.")
    verdict: Optional[str] = Field(default=None, description="The gate's verdict.")
    cost: Optional[float] = Field(default=None, description="Trainable parameters × tokens trained.")
    train_seconds: Optional[float] = None
    message: Optional[str] = None


class BestTrialStatus(ApiModel):
    name: str
    policy: dict[str, float] = Field(default_factory=dict)
    task_score: Optional[float] = None
    mean_kept: Optional[float] = None
    verdict: Optional[str] = None
    cost: Optional[float] = None
    job_name: Optional[str] = Field(default=None, description="In a cluster: the FineTuneJob that promotes it.")
    promoted_model: Optional[PromotedModelStatus] = Field(default=None, description="Where the promoted model is.")


class FineTuneSweepStatus(ApiModel):
    phase: Optional[Literal[SWEEP_PHASES]] = None  # type: ignore[valid-type]
    conditions: list[Condition] = Field(default_factory=list)
    observed_generation: Optional[int] = None
    trial_count: Optional[int] = Field(default=None, description="Trials created so far (printer column).")
    trials: list[TrialStatus] = Field(default_factory=list)
    best: Optional[BestTrialStatus] = Field(default=None, description="The best trial (only once the sweep ended).")
    start_time: Optional[str] = None
    completion_time: Optional[str] = None
    message: Optional[str] = None


class SweepMeta(ObjectMeta):
    """ObjectMeta with a shorter name: trials add `-t<index>` and must stay within a job name."""

    name: Annotated[str, Field(min_length=1, max_length=MAX_SWEEP_NAME_LENGTH, pattern=DNS_LABEL)] = Field(
        description=f"DNS label, at most {MAX_SWEEP_NAME_LENGTH} characters (trials add `-t<index>`)."
    )


class FineTuneSweep(ManifestModel):
    kind: Literal["FineTuneSweep"]
    metadata: SweepMeta
    spec: FineTuneSweepSpec
    status: Optional[FineTuneSweepStatus] = None


def grid_size(spec: FineTuneSweepSpec) -> int:
    return math.prod(len(d.points()) for d in spec.search_space)


__all__ = [
    "KIND", "PLURAL", "SINGULAR", "SHORT_NAMES", "VERSION", "GROUP", "SEARCHABLE_FIELDS", "MAX_SWEEP_NAME_LENGTH",
    "SearchDimension", "StrategySpec", "ObjectiveSpec", "FineTuneSweepSpec", "FineTuneSweepStatus", "TrialStatus",
    "BestTrialStatus", "FineTuneSweep", "candidate_spec", "trial_name", "typed", "grid_size",
]
