"""The FineTuneJob API: the single source of truth.

Pydantic v2 models for `forgetless.dev/v1alpha1` `FineTuneJob`. The CRD in `crds/` and in the
chart is generated from these models (`forgetless crd`), and the same models validate manifests
for `forgetless validate` / `forgetless run` and inside the operator and trainer.

Cross-field rules are declared once per model, in `RULES`: each `Rule` carries its CEL form (emitted
into `x-kubernetes-validations`, so `kubectl apply` rejects the manifest) and its Python form (run by
pydantic, so `forgetless validate` says the same thing). `exactly_one_of` and `requires` build both
forms from field names. `tests/unit/test_schema.py` checks the two forms agree on the bad-manifest
corpus.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Any, Callable, ClassVar, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, field_validator, model_validator
from pydantic.alias_generators import to_camel, to_snake
from pydantic_core import PydanticCustomError

from forgetless.lifecycle import ALL_CATEGORIES, CATEGORIES, GATE_VERDICTS, PHASES, PROMOTING_VERDICTS, STAGES  # noqa: F401 - re-exported

GROUP = "forgetless.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "FineTuneJob"
PLURAL = "finetunejobs"
SINGULAR = "finetunejob"
SHORT_NAMES = ["ftj"]


DEFAULT_LEARNING_RATE = {"lora": 2e-4, "full": 2e-5}
"""Seed rule: LoRA 1e-4..2e-4, full fine-tuning 1e-5..5e-5."""

MAX_JOB_NAME_LENGTH = 40
"""Children are named `<job>-train-workers` etc.; labels and Job names must stay ≤ 63 chars."""

DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
Name = Annotated[str, Field(min_length=1, max_length=253, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")]
ShortText = Annotated[str, Field(min_length=1, max_length=1024)]
Fraction = Annotated[float, Field(ge=0.0, le=1.0)]

CEL = "x-kubernetes-validations"


def cel(rule: str, message: str, field_path: str | None = None) -> dict[str, Any]:
    entry: dict[str, Any] = {"rule": rule, "message": message}
    if field_path:
        entry["fieldPath"] = field_path
    return entry


@dataclass(frozen=True)
class Rule:
    """One cross-field rule in both forms: `cel` (over the wire object `self`) and `holds` (over the
    validated model). `message` names the fields and the fix; both forms report it."""

    cel: str
    holds: Callable[[Any], bool]
    message: str
    field_path: Optional[str] = None

    def to_cel(self) -> dict[str, Any]:
        return cel(self.cel, self.message, self.field_path)


def _is_set(model: Any, wire_name: str) -> bool:
    value = getattr(model, to_snake(wire_name))
    return value is not None and value != []


def exactly_one_of(*wire_names: str) -> Rule:
    """Exactly one of these optional fields is set (a list counts as set when non-empty)."""
    present = [f"has(self.{n})" if not _LIST_FIELDS.get(n) else f"has(self.{n}) && size(self.{n}) > 0"
               for n in wire_names]
    expression = (f"{present[0]} != {present[1]}" if len(present) == 2
                  else f"[{', '.join(present)}].filter(x, x).size() == 1")
    listed = ", ".join(wire_names[:-1]) + f" or {wire_names[-1]}"
    return Rule(expression, lambda m: sum(_is_set(m, n) for n in wire_names) == 1, f"set exactly one of {listed}")


def requires(field: str, needed: str, message: str) -> Rule:
    """When optional `field` is set, `needed` must be set too."""
    return Rule(f"!has(self.{field}) || has(self.{needed})",
                lambda m: not _is_set(m, field) or _is_set(m, needed), message)


_LIST_FIELDS = {"lmEvalTasks": True}


def _schema_rules(schema: dict[str, Any], model: type) -> None:
    rules = getattr(model, "RULES", ())
    if rules:
        schema[CEL] = [rule.to_cel() for rule in rules]


class ApiModel(BaseModel):
    """Base: camelCase on the wire, unknown fields rejected, values validated on assignment; the
    model's `RULES` are checked after field validation and emitted as CEL into its JSON schema."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        validate_assignment=True,
        json_schema_extra=_schema_rules,
    )
    RULES: ClassVar[tuple[Rule, ...]] = ()

    @model_validator(mode="after")
    def _check_rules(self) -> "ApiModel":
        for rule in type(self).RULES:
            if not rule.holds(self):
                # error type `forgetless_rule`; ctx.field (from fieldPath) lets error reports name the field
                raise PydanticCustomError("forgetless_rule", rule.message.replace("{", "{{").replace("}", "}}"),
                                          {"field": (rule.field_path or "").lstrip(".")})
        return self

    def to_wire(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


# --------------------------------------------------------------------------- references


class PvcRef(ApiModel):
    """A PersistentVolumeClaim in the job's namespace, optionally a sub-path inside it."""

    claim_name: Name = Field(description="Name of the PersistentVolumeClaim.")
    sub_path: Optional[Annotated[str, Field(max_length=1024)]] = Field(
        default=None, description="Path inside the volume."
    )
    read_only: bool = Field(default=True, description="Mount the claim read-only.")


class SecretKeyRef(ApiModel):
    name: Name = Field(description="Secret name.")
    key: Annotated[str, Field(min_length=1, max_length=253)] = Field(
        default="token", description="Key inside the Secret."
    )


class ConfigMapKeyRef(ApiModel):
    name: Name = Field(description="ConfigMap name.")
    key: Optional[Annotated[str, Field(min_length=1, max_length=253)]] = Field(
        default=None, description="Key inside the ConfigMap; all keys when omitted."
    )


class DataSource(ApiModel):
    """Where a dataset lives: `bundled:<name>`, a local or in-volume path, or a ConfigMap."""

    RULES = (exactly_one_of("path", "configMap"), requires("pvc", "path", "pvc needs a path inside the volume"))

    path: Optional[ShortText] = Field(
        default=None,
        description="`bundled:<name>`, a local path, or a path inside `pvc` (a JSONL file or a directory of JSONL files).",
    )
    pvc: Optional[PvcRef] = Field(default=None, description="Volume that holds `path`.")
    config_map: Optional[ConfigMapKeyRef] = Field(default=None, description="ConfigMap holding JSONL.")


# --------------------------------------------------------------------------- spec sections


class ModelSpec(ApiModel):
    """The base model to fine-tune."""

    name: ShortText = Field(
        description="`bundled:<name>` (shipped with forgetless), a Hugging Face id (`org/model`), or a path (local, or inside `pvc`)."
    )
    revision: Optional[Annotated[str, Field(min_length=1, max_length=255)]] = Field(
        default=None, description="Hugging Face revision (branch, tag or commit)."
    )
    pvc: Optional[PvcRef] = Field(default=None, description="Volume holding the model at `name`.")
    token_secret_ref: Optional[SecretKeyRef] = Field(
        default=None, description="Secret with a Hugging Face token, exposed to stage pods as HF_TOKEN."
    )


TINY_WORLD = "bundled:tiny-world"
"""The bundled 3 M-parameter world model: its general data is the world's own sentences (`bundled:general`)."""

DEFAULT_REHEARSAL_PROMPTS = "bundled:rehearsal-prompts-en"


class SelfRehearsalSpec(ApiModel):
    """General data in the base model's own words (self-synthesized rehearsal): the baseline stage has the
    base model answer a pool of general prompts, greedily, through the job's prompt format, and keeps the
    answers that ended on their own."""

    prompts: Optional[DataSource] = Field(
        default=None,
        description="The prompt pool: JSONL records with a string `prompt` (a file or a directory of JSONL "
        f"files); default `{DEFAULT_REHEARSAL_PROMPTS}` (general English prompts, none of them a suite item).",
    )
    size: Annotated[int, Field(ge=16, le=100000)] = Field(
        default=256, description="How many prompts of the pool are answered (the first `size`)."
    )
    max_new_tokens: Annotated[int, Field(ge=8, le=4096)] = Field(
        default=64, description="Answer budget in tokens; an answer that has not ended by then is dropped."
    )


class DatasetSpec(ApiModel):
    RULES = (Rule("!has(self.general) || !has(self.selfRehearsal)",
                  lambda m: m.general is None or m.self_rehearsal is None,
                  "dataset.general and dataset.selfRehearsal both name the general data: keep one "
                  "(dataset.general: your own file; dataset.selfRehearsal: the base model's own answers)"),)

    task: DataSource = Field(description="The narrow task data to fine-tune on.")
    format: Literal["chat", "instruction", "text"] = Field(
        default="instruction",
        description="`instruction`: {prompt, response}; `chat`: {messages:[{role, content}]}; `text`: {text}.",
    )
    validation_fraction: Annotated[float, Field(ge=0.0, le=0.5)] = Field(
        default=0.1, description="Share of task data held out for validation loss (early stopping)."
    )
    chat_template: Optional[Annotated[str, Field(min_length=1, max_length=65536)]] = Field(
        default=None,
        description="Chat template (Jinja text, or a path to a file holding it) that overrides the model's own; "
        "without either, chat data uses a ChatML default and instruction data of a base model the raw `prompt =>` format.",
    )
    general: Optional[DataSource] = Field(
        default=None,
        description="General data for mixing, self-distillation, the forgetting budget and EWC's Fisher sample, "
        f"and the forecast's reference. Unset: `bundled:general` for `{TINY_WORLD}`; for any other model the "
        "base model's own answers (`selfRehearsal`, generated at baseline).",
    )
    self_rehearsal: Optional[SelfRehearsalSpec] = Field(
        default=None,
        description="Size or point the self-rehearsal generation (the default general data of every model but "
        f"`{TINY_WORLD}`); setting it asks for self-rehearsal for any model.",
    )


class LoraSpec(ApiModel):
    RULES = (Rule("!has(self.targetModules) || !('all-linear' in self.targetModules) || size(self.targetModules) == 1",
                  lambda m: "all-linear" not in m.target_modules or len(m.target_modules) == 1,
                  "`all-linear` cannot be combined with module names: use [all-linear] or list the modules",
                  ".targetModules"),)
    r: Annotated[int, Field(ge=1, le=1024)] = Field(default=16, description="LoRA rank.")
    alpha: Annotated[float, Field(gt=0, le=4096)] = Field(default=32, description="LoRA alpha.")
    dropout: Annotated[float, Field(ge=0.0, lt=1.0)] = Field(default=0.05, description="LoRA dropout.")
    target_modules: Annotated[
        list[Annotated[str, Field(min_length=1, max_length=128)]], Field(min_length=1, max_length=64)
    ] = Field(
        default_factory=lambda: ["all-linear"],
        description="Module names to adapt (e.g. q_proj, v_proj) or `all-linear`.",
    )


class LoraMethod(ApiModel):
    """LoRA: the base model stays frozen; low-rank adapters are trained."""

    type: Literal["lora"] = Field(default="lora", description="`lora` (frozen base) or `full` fine-tuning.")
    lora: LoraSpec = Field(default_factory=LoraSpec, description="LoRA settings; only with type `lora`.")


class FullMethod(ApiModel):
    """Full fine-tuning: every weight of the base model is trained."""

    type: Literal["full"] = Field(description="`lora` (frozen base) or `full` fine-tuning.")


def _method_tag(value: Any) -> str:
    """The union's tag: `type`, defaulting to lora (a manifest may give only a `lora` block)."""
    return (value.get("type", "lora") if isinstance(value, dict) else getattr(value, "type", "lora")) or "lora"


MethodSpec = Annotated[
    Union[Annotated[LoraMethod, Tag("lora")], Annotated[FullMethod, Tag("full")]],
    Discriminator(_method_tag, custom_error_type="method_type",
                  custom_error_message="choose lora or full"),
]
"""The training method: a union discriminated by `type`, so a `lora` block exists only with type lora."""


class DataMixingSpec(ApiModel):
    general_fraction: Annotated[float, Field(ge=0.0, le=0.9)] = Field(
        default=0.2, description="Share of each epoch's examples drawn from general data (seed rule: 0.2–0.3)."
    )


class ReplaySource(ApiModel):
    RULES = (exactly_one_of("fineTuneJob", "path"),)

    fine_tune_job: Optional[Name] = Field(default=None, description="An earlier FineTuneJob in this namespace.")
    path: Optional[ShortText] = Field(default=None, description="A replay buffer file or an earlier job's output dir.")


class ReplaySpec(ApiModel):
    buffer_size: Annotated[int, Field(ge=1, le=10_000_000)] = Field(
        default=1000, description="Examples this job keeps in its reservoir buffer for later jobs."
    )
    fraction: Annotated[float, Field(ge=0.0, le=0.9)] = Field(
        default=0.1, description="Share of each epoch drawn from earlier jobs' buffers."
    )
    sources: Annotated[list[ReplaySource], Field(max_length=32)] = Field(
        default_factory=list, description="Earlier jobs whose buffers are replayed."
    )


class EwcSpec(ApiModel):
    lambda_: Annotated[float, Field(ge=0.0, le=1e12)] = Field(
        default=1000.0, alias="lambda", description="Penalty strength λ in λ/2·Σ F_i(θ_i−θ*_i)²."
    )
    fisher_samples: Annotated[int, Field(ge=1, le=1_000_000)] = Field(
        default=256, description="General-data examples used to estimate the diagonal Fisher."
    )
    online: bool = Field(default=False, description="Online EWC: accumulate Fisher across a chain of jobs.")
    decay: Annotated[float, Field(gt=0.0, le=1.0)] = Field(
        default=0.9, description="Online EWC: weight γ of the previous Fisher (F = γ·F_prev + F_new)."
    )
    previous: Optional[ReplaySource] = Field(
        default=None, description="Online EWC: the earlier job whose Fisher and anchor to accumulate."
    )

    RULES = (Rule("!has(self.previous) || has(self.online) && self.online",
                  lambda m: m.previous is None or m.online,
                  "previous needs online: true (online EWC chains jobs)", ".previous"),)


class EarlyStoppingSpec(ApiModel):
    patience: Annotated[int, Field(ge=1, le=1000)] = Field(
        default=3, description="Evaluations without improvement before stopping."
    )
    min_delta: Annotated[float, Field(ge=0.0)] = Field(
        default=0.0, description="Smallest validation-loss decrease that counts as an improvement."
    )
    eval_interval_steps: Annotated[int, Field(ge=1)] = Field(default=50, description="Steps between validations.")


class ForgettingBudgetSpec(ApiModel):
    RULES = (Rule("!has(self.signal) || self.signal != 'kl' || has(self.maxKL)",
                  lambda m: m.signal != "kl" or m.max_kl is not None,
                  "signal: kl needs maxKL: the largest mean per-token KL(base || model) allowed, in nats (> 0)",
                  ".maxKL"),)

    signal: Literal["probe", "kl"] = Field(
        default="probe",
        description="probe: generate and score the probe subset of the regression suite (maxDrop). kl: the mean "
        "per-token forward KL(base || model) on the general probe items' reference answers (maxKL), forward "
        "passes only.",
    )
    max_kl: Optional[Annotated[float, Field(gt=0.0, le=100.0)]] = Field(
        default=None, alias="maxKL",
        description="signal kl: a breach is a mean KL above this many nats per token (required with signal kl).",
    )
    max_drop: Annotated[float, Field(ge=0.0, le=1.0)] = Field(
        default=0.05, description="Largest drop of the probe's mean general score below baseline allowed while training."
    )
    probe_interval_steps: Annotated[int, Field(ge=1)] = Field(default=50, description="Steps between probes.")
    probe_items: Annotated[int, Field(ge=1, le=100_000)] = Field(
        default=16, description="Items per regression task in the probe subset."
    )
    on_breach: Literal["Adjust", "Stop"] = Field(
        default="Adjust",
        description="Adjust: roll back to the last in-budget snapshot and continue more gently (learning rate "
        "× learningRateFactor, general data + generalFractionStep up to maxGeneralFraction), at most "
        "maxAdjustments times, then stop. Stop: roll back and stop at the first breach.",
    )
    max_adjustments: Annotated[int, Field(ge=0, le=20)] = Field(
        default=3, description="Breaches answered by a gentler policy before training stops."
    )
    learning_rate_factor: Annotated[float, Field(gt=0.0, le=1.0)] = Field(
        default=0.5, description="Each adjustment multiplies the learning rate by this."
    )
    general_fraction_step: Annotated[float, Field(ge=0.0, lt=1.0)] = Field(
        default=0.3,
        description="Each adjustment adds this share of general data to every epoch (the first one brings the "
        "seed rule's 20-30 %).",
    )
    max_general_fraction: Annotated[float, Field(ge=0.0, lt=1.0)] = Field(
        default=0.5, description="Cap on the share of general data (dataMixing's own share included)."
    )


class SelfDistillationSpec(ApiModel):
    weight: Annotated[float, Field(gt=0.0, le=1000.0)] = Field(
        default=1.0,
        description="β: every micro-batch's loss gains β × the mean per-token KL(base || model) on the answers of "
        "its general-data rows (the base from the adapter disabled with LoRA, from a frozen copy with full "
        "fine-tuning).",
    )


class MitigationSpec(ApiModel):
    RULES = (
        Rule("(has(self.dataMixing) ? self.dataMixing.generalFraction : 0.2)"
             " + (has(self.replay) ? self.replay.fraction : 0.0) < 1.0",
             lambda m: m.data_mixing.general_fraction + (m.replay.fraction if m.replay else 0.0) < 1.0,
             "dataMixing.generalFraction + replay.fraction must be below 1 so some task data remains"),
        Rule("!has(self.selfDistillation) || (has(self.dataMixing) ? self.dataMixing.generalFraction : 0.2) > 0.0",
             lambda m: m.self_distillation is None or m.data_mixing.general_fraction > 0,
             "selfDistillation distils on the general rows that data mixing brings: set dataMixing.generalFraction "
             "above 0 (e.g. 0.2)", ".selfDistillation"),
    )

    data_mixing: DataMixingSpec = Field(default_factory=DataMixingSpec, description="General-data mixing.")
    replay: Optional[ReplaySpec] = Field(default=None, description="Replay of earlier jobs' data.")
    ewc: Optional[EwcSpec] = Field(default=None, description="Elastic weight consolidation.")
    early_stopping: Optional[EarlyStoppingSpec] = Field(default=None, description="Early stopping on validation loss.")
    forgetting_budget: Optional[ForgettingBudgetSpec] = Field(
        default=None, description="Stop and roll back when a probe shows more forgetting than allowed."
    )
    self_distillation: Optional[SelfDistillationSpec] = Field(
        default=None, description="Keep the base model's answers on the general data: a KL(base || model) term on "
        "the general rows of every batch.",
    )

    def turned_on(self) -> frozenset[str]:
        """The mitigations this spec turns on, by field name (the keys of forgetless_trainer.mitigations.REGISTRY):
        a block that is set, and data mixing when its general fraction is above 0."""
        on = {name for name in type(self).model_fields if name != "data_mixing" and getattr(self, name) is not None}
        if self.data_mixing.general_fraction > 0:
            on.add("data_mixing")
        return frozenset(on)


class TrainingSpec(ApiModel):
    epochs: Annotated[float, Field(gt=0, le=1000)] = Field(default=3, description="Passes over the task data.")
    learning_rate: Optional[Annotated[float, Field(gt=0.0, le=1.0)]] = Field(
        default=None, description="Peak learning rate; default 2e-4 for lora, 2e-5 for full."
    )
    batch_size: Annotated[int, Field(ge=1, le=65536)] = Field(default=16, description="Per-worker micro-batch size.")
    gradient_accumulation_steps: Annotated[int, Field(ge=1, le=4096)] = Field(default=1)
    max_seq_length: Annotated[int, Field(ge=8, le=1_048_576)] = Field(default=256, description="Tokens per example.")
    warmup_ratio: Annotated[float, Field(ge=0.0, le=0.5)] = Field(default=0.1, description="Share of steps warming up.")
    lr_scheduler: Literal["cosine", "linear", "constant"] = Field(default="cosine")
    weight_decay: Annotated[float, Field(ge=0.0, le=1.0)] = Field(default=0.0)
    max_grad_norm: Annotated[float, Field(gt=0.0)] = Field(default=1.0)
    max_steps: Optional[Annotated[int, Field(ge=1)]] = Field(default=None, description="Stop after this many steps.")
    seed: Annotated[int, Field(ge=0, le=2**31 - 1)] = Field(default=42)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        default="auto", description="`auto`: bf16 on GPUs that support it, fp32 on CPU. Also the dtype the model is loaded in."
    )
    attention: Literal["auto", "flash_attention_2", "sdpa", "eager"] = Field(
        default="auto",
        description="Attention kernel (`attn_implementation`); `auto`: flash-attention 2 when installed on a GPU, else SDPA, else eager.",
    )
    gradient_checkpointing: bool = Field(
        default=False, description="Recompute activations in the backward pass: less memory, ~30 % more compute."
    )
    packing: bool = Field(
        default=False,
        description="Pack a micro-batch's examples end to end into rows of maxSeqLength (position ids restart per example; no cross-example attention).",
    )
    checkpoint_interval_steps: Annotated[int, Field(ge=1)] = Field(default=100)
    log_interval_steps: Annotated[int, Field(ge=1)] = Field(
        default=10, description="Steps per tokens-per-second sample (live metric); progress lines come about every 10 %."
    )


class DeepSpeedSpec(ApiModel):
    RULES = (Rule("!self.offloadParams || self.zeroStage == 3", lambda m: not m.offload_params or m.zero_stage == 3,
                  "offloadParams needs zeroStage 3", ".offloadParams"),
             Rule("!self.offloadOptimizer || self.zeroStage >= 1", lambda m: not m.offload_optimizer or m.zero_stage >= 1,
                  "offloadOptimizer needs zeroStage 1, 2 or 3", ".offloadOptimizer"))

    zero_stage: Annotated[int, Field(ge=0, le=3)] = Field(default=2, description="ZeRO stage 0–3.")
    offload_optimizer: bool = Field(default=False, description="Offload optimizer state to CPU (ZeRO ≥ 1).")
    offload_params: bool = Field(default=False, description="Offload parameters to CPU (ZeRO 3 only).")


Quantity = Annotated[str, Field(pattern=r"^[0-9]+(\.[0-9]+)?([eE][0-9]+|[numkKMGTPE]i?)?$", max_length=64)]


class ContainerResources(ApiModel):
    requests: dict[Annotated[str, Field(max_length=253)], Quantity] = Field(default_factory=dict)
    limits: dict[Annotated[str, Field(max_length=253)], Quantity] = Field(default_factory=dict)


class Toleration(ApiModel):
    key: Optional[Annotated[str, Field(max_length=316)]] = None
    operator: Optional[Literal["Exists", "Equal"]] = None
    value: Optional[Annotated[str, Field(max_length=253)]] = None
    effect: Optional[Literal["NoSchedule", "PreferNoSchedule", "NoExecute"]] = None
    toleration_seconds: Optional[int] = None


class ResourcesSpec(ApiModel):
    workers: Annotated[int, Field(ge=1, le=1024)] = Field(default=1, description="Trainer pods (ranks).")
    gpus_per_worker: Annotated[int, Field(ge=0, le=16)] = Field(default=0, description="nvidia.com/gpu per pod.")
    trainer_image: Optional[Annotated[str, Field(min_length=1, max_length=512)]] = Field(
        default=None, description="Trainer image; the operator's default when omitted."
    )
    container: ContainerResources = Field(default_factory=ContainerResources, description="Container requests/limits.")
    node_selector: dict[Annotated[str, Field(max_length=316)], Annotated[str, Field(max_length=63)]] = Field(
        default_factory=dict
    )
    tolerations: Annotated[list[Toleration], Field(max_length=64)] = Field(default_factory=list)
    priority_class_name: Optional[Name] = None


LM_EVAL_ENTRY = "^[^:]+(:(" + "|".join(ALL_CATEGORIES) + "))?$"
"""An lmEvalTasks entry: a task name, or `name:category` with one of the categories."""


class SuiteSpec(ApiModel):
    RULES = (exactly_one_of("path", "configMap", "lmEvalTasks"),
             Rule(f"!has(self.lmEvalTasks) || self.lmEvalTasks.all(t, t.matches('{LM_EVAL_ENTRY}'))",
                  lambda m: all(re.fullmatch(LM_EVAL_ENTRY, t) for t in m.lm_eval_tasks or []),
                  "an entry written name:category must name one of " + ", ".join(ALL_CATEGORIES)
                  + " (e.g. mmlu:knowledge); a plain task name takes its category from the built-in table",
                  ".lmEvalTasks"))

    path: Optional[ShortText] = Field(default=None, description="`bundled:<name>` or a suite directory (local or in `pvc`).")
    pvc: Optional[PvcRef] = None
    config_map: Optional[ConfigMapKeyRef] = Field(default=None, description="ConfigMap holding suite.json + task JSONL.")
    lm_eval_tasks: Optional[Annotated[list[Annotated[str, Field(min_length=1, max_length=128)]], Field(max_length=64)]] = (
        Field(default=None, description="lm-evaluation-harness task names (hellaswag, arc_easy, mmlu, …).")
    )


class ThresholdsSpec(ApiModel):
    max_category_drop: Annotated[float, Field(ge=0.0, le=1.0)] = Field(
        default=0.05, description="Largest allowed drop of any category's score (absolute, 0–1)."
    )
    max_mean_drop: Annotated[float, Field(ge=0.0, le=1.0)] = Field(
        default=0.02, description="Largest allowed drop of the mean general score."
    )
    per_category: dict[Literal[CATEGORIES], Annotated[float, Field(ge=0.0, le=1.0)]] = Field(  # type: ignore[valid-type]
        default_factory=dict, description="Overrides of maxCategoryDrop per category."
    )
    min_task_gain: Optional[Annotated[float, Field(ge=-1.0, le=1.0)]] = Field(
        default=None,
        description="Smallest target-task improvement (point estimate) required to promote. Unset: the lower "
        "bound of the task gain's confidence interval must be above 0 (evidence the model learned the task); "
        "0 accepts a model that learned nothing.",
    )


class InterpolationRescueSpec(ApiModel):
    max_evaluations: Annotated[int, Field(ge=2, le=20)] = Field(
        default=6,
        description="Half-suite evaluations the search may spend, the confirmation included (each scores half "
        "of the suite's items at one α).",
    )


class RescueSpec(ApiModel):
    RULES = (Rule("has(self.interpolation)", lambda m: m.interpolation is not None,
                  "rescue needs a strategy: set rescue.interpolation (e.g. {maxEvaluations: 6})",
                  ".interpolation"),)

    interpolation: Optional[InterpolationRescueSpec] = Field(
        default=None,
        description="Weight interpolation (WiSE-FT): θ(α) = θ₀ + α·(θ − θ₀), the LoRA adapter scaled by α or a blend "
        "of the base and fine-tuned weights. The largest α whose gate passes and whose task gain shows learning is "
        "chosen on one half of the suite's items and confirmed on the other half.",
    )


HELD_OUT_MIN_ITEMS = 20
"""The fewest held-out task records the task score is computed on (and the fewest left to train on)."""


class TaskScoringSpec(ApiModel):
    """How the gate scores the job's own task (the `task` category)."""

    source: Literal["HeldOut", "Suite"] = Field(
        default="HeldOut",
        description="`HeldOut` (default): held-out records of the job's own task data — `test.jsonl` beside "
        "`train.jsonl` in a task directory, else a deterministic share set aside before training and never trained "
        "on — scored whatever the suite; a suite's own task category is then not scored. `Suite`: the suite's task "
        "category as its author wrote it (nothing is held out).",
    )
    held_out_fraction: Annotated[float, Field(ge=0.01, le=0.5)] = Field(
        default=0.1,
        description="Without a test.jsonl: the share of the task records set aside (at least 20, at most maxItems).",
    )
    max_items: Annotated[int, Field(ge=HELD_OUT_MIN_ITEMS, le=100_000)] = Field(
        default=150, description="At most this many held-out records are scored (and set aside).")
    scorer: Literal["Auto", "ExactMatch", "JsonMatch", "Similarity"] = Field(
        default="Auto",
        description="`Auto` chooses from the held-out answers: `JsonMatch` (the answer's JSON equals the target's, "
        "key order and string case/whitespace ignored) when they are JSON, `ExactMatch` (normalised) when they are "
        "short single lines, else `Similarity` (token F1 ≥ minSimilarity).",
    )
    min_similarity: Annotated[float, Field(gt=0.0, le=1.0)] = Field(
        default=0.5, description="`Similarity`: the token F1 an answer needs to count as right.")


class FormatLeakSpec(ApiModel):
    """How the format category finds the task's format leaking into unrelated answers."""

    detector: Literal["Auto", "Learned", "Pattern"] = Field(
        default="Auto",
        description="`Auto`: a suite task's `leak_pattern` where it has one, else the detector learned at baseline "
        "from the task's answers against the base model's answers to the suite's open-ended prompts. `Learned`: the "
        "learned detector for every format_leak task (patterns ignored). `Pattern`: patterns only.",
    )


class RegressionSpec(ApiModel):
    RULES = (Rule("!has(self.rescue) || !has(self.onRegression) || self.onRegression == 'Block'",
                  lambda m: m.rescue is None or m.on_regression == "Block",
                  "rescue searches for a model the gate lets through when it blocks; with onRegression: Warn "
                  "nothing is blocked: set onRegression: Block or remove rescue", ".rescue"),)

    suite: Optional[SuiteSpec] = Field(
        default=None,
        description="The regression suite. Omitted: the default for the model — `bundled:world-v1` for "
        "`bundled:tiny-world`, `bundled:general-en-v2` (task-agnostic general probes) for any other model.",
    )
    task: TaskScoringSpec = Field(default_factory=TaskScoringSpec, description="How the job's own task is scored.")
    format_leak: FormatLeakSpec = Field(default_factory=FormatLeakSpec,
                                        description="How format leaks into unrelated answers are found.")
    thresholds: ThresholdsSpec = Field(default_factory=ThresholdsSpec)
    confidence: Annotated[float, Field(ge=0.5, le=0.999)] = Field(
        default=0.95, description="A category fails only when its drop exceeds the threshold at this confidence."
    )
    bootstrap_samples: Annotated[int, Field(ge=100, le=100_000)] = Field(default=2000)
    on_regression: Literal["Block", "Warn"] = Field(default="Block", description="Block promotion or only warn.")
    limit: Optional[Annotated[int, Field(ge=1)]] = Field(default=None, description="Items per task (for quick runs).")
    rescue: Optional[RescueSpec] = Field(
        default=None,
        description="When the gate blocks for forgetting: search for a model between the base and the fine-tuned one "
        "that passes (verdict Rescued, promoted). Off by default.",
    )


class InferenceServiceHandOff(ApiModel):
    name: Annotated[str, Field(min_length=1, max_length=63, pattern=DNS_LABEL)] = Field(
        description="An existing KServe `serving.kserve.io/v1beta1` InferenceService."
    )
    namespace: Optional[Annotated[str, Field(min_length=1, max_length=63, pattern=DNS_LABEL)]] = Field(
        default=None, description="Its namespace (default: the FineTuneJob's)."
    )
    adapter_only: bool = Field(
        default=False, description="LoRA: point it at the adapter (`<promoted>/adapter`) instead of the merged model."
    )


class MlflowHandOff(ApiModel):
    RULES = (Rule("!has(self.alias) || self.alias != 'latest' && !self.alias.matches('^[vV][0-9]+$')",
                  lambda m: m.alias != "latest" and not re.fullmatch(r"[vV][0-9]+", m.alias),
                  "alias: `latest` and `v<N>` are reserved by MLflow; choose another alias (e.g. champion)",
                  ".alias"),)

    tracking_uri: Optional[ShortText] = Field(
        default=None,
        description="MLflow tracking server (http(s)://…, or a local store). Unset: `./mlruns` for `forgetless "
        "run`, `<output volume>/mlruns` in a cluster.",
    )
    registered_model: Annotated[str, Field(min_length=1, max_length=256, pattern=r"^[^/:]+$")] = Field(
        description="Registered model that receives a version when the gate passes (no `/` or `:`)."
    )
    alias: Annotated[str, Field(min_length=1, max_length=63, pattern=r"^[A-Za-z0-9_-]+$")] = Field(
        default="champion", description="Alias moved to the new version (only when the gate passed)."
    )
    experiment: Annotated[str, Field(min_length=1, max_length=256)] = Field(
        default="forgetless", description="Experiment of the run logged for every job (blocked ones too)."
    )


class HandOffSpec(ApiModel):
    inference_service: Optional[InferenceServiceHandOff] = Field(
        default=None, description="On promotion, point this InferenceService at the promoted model (cluster only)."
    )
    mlflow: Optional[MlflowHandOff] = Field(
        default=None, description="Log every job to MLflow; register a model version only when the gate passed."
    )


class OutputSpec(ApiModel):
    path: Optional[ShortText] = Field(
        default=None, description="Where the adapter/model and reports go (local dir, or a path in `pvc`)."
    )
    pvc: Optional[PvcRef] = Field(
        default=None,
        description="Volume for the work dir, outputs and the baseline cache. Required in a cluster (the stage "
        "pods share results through it); always mounted writable, whatever readOnly says.",
    )
    promote: bool = Field(default=True, description="Promote the model when the gate passes.")
    promote_path: Optional[ShortText] = Field(default=None, description="Copy the promoted model here.")
    hand_off: Optional[HandOffSpec] = Field(
        default=None, description="Who is told about a promoted model (only a model that passed the gate)."
    )


class FineTuneJobSpec(ApiModel):
    RULES = (
        Rule("!has(self.mitigation) || !has(self.mitigation.ewc) || !has(self.deepspeed)"
             " || !has(self.deepspeed.zeroStage) || self.deepspeed.zeroStage < 3",
             lambda m: m.mitigation.ewc is None or m.deepspeed.zero_stage < 3,
             "mitigation.ewc is not supported with deepspeed.zeroStage 3 (use zeroStage 0-2): the Fisher and "
             "anchor need whole parameters"),
        Rule("has(self.output) && has(self.output.pvc) || !has(self.resources) || !has(self.resources.workers)"
             " || self.resources.workers == 1",
             lambda m: m.output.pvc is not None or m.resources.workers == 1,
             "resources.workers > 1 needs output.pvc (a volume all workers share)"),
        Rule("!has(self.output) || !has(self.output.handOff) || !has(self.output.handOff.inferenceService)"
             " || !has(self.output.handOff.inferenceService.adapterOnly)"
             " || !self.output.handOff.inferenceService.adapterOnly"
             " || !has(self.method) || !has(self.method.type) || self.method.type == 'lora'",
             lambda m: not (m.output.hand_off and m.output.hand_off.inference_service
                            and m.output.hand_off.inference_service.adapter_only) or m.method.type == "lora",
             "output.handOff.inferenceService.adapterOnly needs method.type lora (a full fine-tune has no adapter)"),
        Rule("!has(self.output) || !has(self.output.handOff) || !has(self.output.handOff.inferenceService)"
             " || !has(self.output.promote) || self.output.promote",
             lambda m: not (m.output.hand_off and m.output.hand_off.inference_service) or m.output.promote,
             "output.handOff.inferenceService needs output.promote: true (nothing is handed off otherwise)"),
        Rule("!has(self.mitigation) || !has(self.mitigation.selfDistillation) || !has(self.training)"
             " || !has(self.training.packing) || !self.training.packing",
             lambda m: m.mitigation.self_distillation is None or not m.training.packing,
             "mitigation.selfDistillation needs training.packing: false (a packed row mixes task and general examples)"),
        Rule("!has(self.mitigation) || !has(self.mitigation.earlyStopping) || !has(self.dataset.validationFraction)"
             " || self.dataset.validationFraction > 0.0",
             lambda m: m.mitigation.early_stopping is None or m.dataset.validation_fraction > 0,
             "mitigation.earlyStopping needs validation data: set dataset.validationFraction above 0 (e.g. 0.1)"),
    )

    model: ModelSpec = Field(description="The base model.")
    dataset: DatasetSpec = Field(description="Task data and general data.")
    method: MethodSpec = Field(default_factory=LoraMethod)
    mitigation: MitigationSpec = Field(default_factory=MitigationSpec)
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    deepspeed: DeepSpeedSpec = Field(default_factory=DeepSpeedSpec)
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    regression: RegressionSpec = Field(default_factory=RegressionSpec)
    output: OutputSpec = Field(default_factory=OutputSpec)
    suspend: bool = Field(default=False, description="Hold the job (Kueue admits by setting this to false).")
    active_deadline_seconds: Optional[Annotated[int, Field(ge=1)]] = Field(
        default=None, description="Fail the whole job (DeadlineExceeded) after this many seconds."
    )
    backoff_limit: Annotated[int, Field(ge=0, le=100)] = Field(
        default=2,
        description="Retries per stage. One worker: the stage pod is retried (training resumes from its last "
        "checkpoint). Several workers: the whole group is restarted from the last checkpoint, at most this many times.",
    )
    ttl_seconds_after_finished: Optional[Annotated[int, Field(ge=0)]] = Field(
        default=None, description="Delete the FineTuneJob this long after it finished."
    )

    @model_validator(mode="after")
    def _default_suite(self) -> "FineTuneJobSpec":
        if self.regression.suite is None:
            self.regression.suite = SuiteSpec(path=default_suite_path(self.model.name))
        return self

    def learning_rate(self) -> float:
        return self.training.learning_rate or DEFAULT_LEARNING_RATE[self.method.type]


BUNDLED_WORLD_MODEL = "bundled:tiny-world"
BUNDLED_WORLD_SUITE = "bundled:world-v1"
GENERAL_CHAT_SUITE = "bundled:general-en-v2"


def default_suite_path(model_name: str) -> str:
    """The suite a job without regression.suite is gated on: the bundled world's own suite for the bundled
    world model, the task-agnostic general suite for every other (chat) model."""
    return BUNDLED_WORLD_SUITE if model_name == BUNDLED_WORLD_MODEL else GENERAL_CHAT_SUITE


# --------------------------------------------------------------------------- status


class Condition(ApiModel):
    type: Annotated[str, Field(max_length=316)]
    status: Literal["True", "False", "Unknown"]
    reason: Annotated[str, Field(max_length=1024, pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$")]
    message: Annotated[str, Field(max_length=32768)] = ""
    last_transition_time: str
    observed_generation: Optional[int] = None


class StageRestart(ApiModel):
    attempt: int = Field(description="The attempt that failed (1 = the first run).")
    time: str
    message: str = Field(description="Why: the failed rank and what its pod said.")


class BudgetAdjustment(ApiModel):
    step: int = Field(description="The probe step that breached the forgetting budget.")
    probe_mean: Optional[float] = Field(default=None, description="signal probe: the probe's mean general score.")
    general_kl: Optional[float] = Field(default=None, alias="generalKL",
                                        description="The mean KL(base || model) at the breach, nats per token.")
    rolled_back_to_step: int
    learning_rate_scale: float = Field(description="Learning rate relative to the spec's, from then on.")
    extra_general_fraction: float = Field(description="General data added to every epoch by the controller.")


class StageStatus(ApiModel):
    phase: Literal["Pending", "Running", "Succeeded", "Failed", "Skipped"] = "Pending"
    job_name: Optional[str] = None
    start_time: Optional[str] = None
    completion_time: Optional[str] = None
    attempts: int = Field(default=0, description="Runs so far: pod attempts (one worker) or group attempts (several).")
    restarts: list[StageRestart] = Field(
        default_factory=list, description="Group restarts of a multi-worker stage (the last 10)."
    )
    adjustments: list[BudgetAdjustment] = Field(
        default_factory=list, description="Train: the forgetting-budget controller's adjustments."
    )
    message: Optional[str] = None
    result: Optional[dict[str, Any]] = Field(default=None, description="The stage's compact JSON summary.")


class CategoryVerdict(ApiModel):
    category: str
    baseline: float
    final: float
    drop: float
    drop_upper: float = Field(description="Upper end of the drop's confidence interval.")
    drop_lower: float
    threshold: float
    passed: bool




class RescueTrial(ApiModel):
    alpha: float
    half: Literal["choice", "confirmation"]
    verdict: str
    task_score: Optional[float] = None
    kept: Optional[float] = Field(default=None, description="Share of the base model's mean general score kept.")


class RescueStatus(ApiModel):
    strategy: Literal["interpolation"] = "interpolation"
    outcome: Literal["Rescued", "NotRescued"]
    alpha: Optional[float] = Field(default=None, description="The α promoted: θ₀ + α·(θ − θ₀).")
    task_score: Optional[float] = Field(default=None, description="Task score at α on the confirmation half.")
    kept: Optional[float] = Field(default=None, description="Share of the mean general score kept at α, confirmation half.")
    evaluations: int = Field(description="Half-suite evaluations spent.")
    max_evaluations: int
    trials: list[RescueTrial] = Field(default_factory=list, description="Every α tried, in order (at most 20).")
    original_mean_drop: Optional[float] = Field(default=None, description="The fine-tuned model's mean drop (α = 1).")
    seconds: Optional[float] = Field(default=None, description="Wall time of the search (trials stored by an "
                                     "interrupted attempt cost nothing again).")
    message: Optional[str] = None


class GateStatus(ApiModel):
    verdict: Literal[GATE_VERDICTS]  # type: ignore[valid-type]
    reasons: list[str] = Field(default_factory=list)
    mean_drop: float
    task_gain: Optional[float] = None
    task_gain_lower: Optional[float] = Field(default=None, description="Lower bound of the task gain's interval.")
    categories: list[CategoryVerdict] = Field(default_factory=list)
    notes: list[str] = Field(
        default_factory=list,
        description="What the scores rest on: where the task items came from and how they are scored, and how "
        "format leaks were found (or why the format category cannot see them for this task).",
    )
    rescue: Optional[RescueStatus] = Field(
        default=None, description="regression.rescue's search, when the gate blocked for forgetting and it ran.")


class PromotedModelStatus(ApiModel):
    path: str = Field(description="Where the promoted model is: the path inside the output volume "
                      "(`pathInVolume`) when there is one, else the directory the stage wrote.")
    uri: Optional[str] = Field(default=None, description="`pvc://<claim>/<path>` (the form KServe's storageUri takes).")
    claim_name: Optional[str] = None
    digest: str = Field(description="sha256 over every file's relative path and content: `sha256:<hex>`.")
    format: Optional[str] = Field(default=None, description="`merged+adapter` (LoRA) or `full`.")


class InferenceServiceHandOffStatus(ApiModel):
    name: str
    namespace: str
    phase: Literal["Patched", "NotFound"] = Field(description="Patched: it serves the promoted model.")
    storage_uri: Optional[str] = Field(default=None, description="What it was pointed at.")
    previous_storage_uri: Optional[str] = Field(default=None, description="What it served before (for a rollback).")
    time: Optional[str] = None
    message: Optional[str] = None


class MlflowHandOffStatus(ApiModel):
    tracking_uri: str
    experiment_id: Optional[str] = None
    run_id: str
    registered_model: Optional[str] = None
    version: Optional[str] = Field(default=None, description="The model version registered (only if the gate passed).")
    alias: Optional[str] = None


class HandOffStatus(ApiModel):
    inference_service: Optional[InferenceServiceHandOffStatus] = None
    mlflow: Optional[MlflowHandOffStatus] = None


class ProgressStatus(ApiModel):
    step: int = 0
    total_steps: Optional[int] = None
    epoch: Optional[float] = None
    loss: Optional[float] = None
    stopped_reason: Optional[str] = None
    general_kl: Optional[float] = Field(
        default=None, alias="generalKL",
        description="Mean per-token forward KL(base || model) in nats on the general probe items at the end of "
        "training (a forgetting signal: it tracks what the gate will measure).",
    )




class TrainerMetric(ApiModel):
    name: Annotated[str, Field(min_length=1)]
    value: Annotated[str, Field(min_length=1, description="The value as a string (as in Kubeflow Trainer).")]


class TrainerStatus(ApiModel):
    """Live progress of the running stage, in the shape of Kubeflow Trainer's `TrainJob.status.trainerStatus`
    (KEP-2779) plus `stage` and a readable `estimatedRemaining`. The operator reads it from the stage pod's
    /metrics (rank 0) at most every `--progress-seconds` (15 s); stage transitions reset it, a finished
    job shows 100."""

    stage: Optional[Literal[STAGES]] = Field(  # type: ignore[valid-type]
        default=None, description="The stage the progress is of (baseline, train, evaluate)."
    )
    progress_percentage: Optional[Annotated[int, Field(ge=0, le=100)]] = Field(
        default=None, description="How much of the stage's loop is done (training steps, suite answers), 0-100."
    )
    estimated_remaining_seconds: Optional[Annotated[int, Field(ge=0)]] = Field(
        default=None, description="Seconds left in the stage's loop at its rate so far; absent until known."
    )
    estimated_remaining: Optional[str] = Field(
        default=None, description="estimatedRemainingSeconds for people (`12m41s`), the ETA column."
    )
    metrics: list[TrainerMetric] = Field(
        default_factory=list, description="The latest values: step, totalSteps, loss, learningRate, "
        "tokensPerSecond, generalKL, probeMeanScore (train); answers, totalAnswers (baseline, evaluate).",
    )
    last_updated_time: Optional[str] = Field(default=None, description="When these values were read.")


class FineTuneJobStatus(ApiModel):
    model_config = ConfigDict(extra="allow")

    phase: Optional[Literal[PHASES]] = None  # type: ignore[valid-type]
    conditions: list[Condition] = Field(default_factory=list)
    observed_generation: Optional[int] = None
    spec_hash: Optional[str] = Field(default=None, description="Hash of the spec the job started with.")
    started_spec: Optional[dict[str, Any]] = Field(
        default=None, description="The spec the job started with (frozen at start; later stages are built from it)."
    )
    stages: dict[Literal[STAGES], StageStatus] = Field(default_factory=dict)  # type: ignore[valid-type]
    baseline_scores: dict[str, float] = Field(default_factory=dict)
    final_scores: dict[str, float] = Field(default_factory=dict)
    forgetting: dict[str, float] = Field(default_factory=dict, description="Drop per category (baseline − final).")
    gate: Optional[GateStatus] = None
    progress: Optional[ProgressStatus] = None
    trainer_status: Optional[TrainerStatus] = Field(
        default=None, description="Live progress of the running stage (Kubeflow Trainer's trainerStatus shape)."
    )
    promoted: Optional[bool] = None
    promoted_model: Optional[PromotedModelStatus] = None
    hand_off: Optional[HandOffStatus] = Field(default=None, description="What was told about the promoted model.")
    forgetting_points: Optional[str] = Field(
        default=None, description="Mean drop of the general score in percentage points, e.g. `1.2 pts` (printer column)."
    )
    start_time: Optional[str] = None
    completion_time: Optional[str] = None
    message: Optional[str] = None
    kopf: Optional[dict[str, Any]] = Field(default=None, description="kopf handler progress (operator internal).")


class ObjectMeta(ApiModel):
    model_config = ConfigDict(extra="allow")

    name: Annotated[str, Field(min_length=1, max_length=MAX_JOB_NAME_LENGTH, pattern=DNS_LABEL)] = Field(
        description=f"DNS label, at most {MAX_JOB_NAME_LENGTH} characters (children add suffixes)."
    )
    namespace: Optional[str] = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)


class ManifestModel(ApiModel):
    """A whole manifest of one of our kinds (FineTuneJob, FineTuneSweep): the apiVersion checked."""

    api_version: Literal["forgetless.dev/v1alpha1"] = Field(alias="apiVersion")

    @field_validator("api_version", mode="before")
    @classmethod
    def _api_version(cls, value: Any) -> Any:
        if isinstance(value, str) and value != API_VERSION and value.startswith(GROUP):
            raise ValueError(f"unsupported version {value!r}; this release serves {API_VERSION}")
        return value


class FineTuneJob(ManifestModel):
    """A whole manifest: what `kubectl apply` and `forgetless run` take."""

    kind: Literal["FineTuneJob"]
    metadata: ObjectMeta
    spec: FineTuneJobSpec
    status: Optional[FineTuneJobStatus] = None


def parse_job(document: Any) -> FineTuneJob:
    """Validate one manifest (already parsed from YAML/JSON); raises pydantic.ValidationError."""
    return FineTuneJob.model_validate(document)


