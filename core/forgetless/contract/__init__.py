"""The stage contract, in one place: the work-dir layout, the pod env names, the termination message.

Everything the operator, the trainer's stages and the local runner agree on by name lives here, so
a file moved or an env var renamed is one edit (docs/contracts.md describes the same contract in
words). `forgetless.contract.message` holds the summary's wire form (what fits the termination
message). `tests/unit/test_contract.py` fails when one of these names is spelled as a literal
anywhere else in the runtime packages.

Work dir (`WORKDIR` = the job's output folder locally, the output volume's job folder in pods)::

    job.json                        the spec a local work dir holds (JOB_FILE; also the file a stage pod reads)
    <stage>/summary.json            a finished stage's full summary (rank 0 writes it; `summary_path`)
    baseline/results.json           the base model's item-level results
    train/output/                   the trained adapter or full model
    train/checkpoints/              resumable checkpoints
    evaluate/results.json           the fine-tuned model's item-level results
    report/                         gate.json, report.md, report.png
    rescue/{trials,output,results.json}   the weight-interpolation rescue (forgetless_trainer.rescue)
    promoted/                       the promoted model when output.promotePath is unset
"""

from __future__ import annotations

from pathlib import Path

# --------------------------------------------------------------------------- the work dir

JOB_FILE = "job.json"
SUMMARY_FILE = "summary.json"
RESULTS_FILE = "results.json"

BASELINE_RESULTS = Path("baseline") / RESULTS_FILE
SELF_REHEARSAL = Path("baseline") / "self_rehearsal.jsonl"
"""The base model's own answers to the rehearsal prompts (chat records), written by the baseline stage, read by training."""
SELF_REHEARSAL_META = Path("baseline") / "self_rehearsal.json"
"""How they were made: cache key, prompts answered, answers kept, seconds, cached or generated."""
TRAIN_DIR = Path("train")
TRAIN_OUTPUT = TRAIN_DIR / "output"
TRAIN_CHECKPOINTS = TRAIN_DIR / "checkpoints"
EVALUATE_DIR = Path("evaluate")
EVALUATE_RESULTS = EVALUATE_DIR / RESULTS_FILE
REPORT_DIR = Path("report")
RESCUE_DIR = Path("rescue")
RESCUE_TRIALS = RESCUE_DIR / "trials"
RESCUE_OUTPUT = RESCUE_DIR / "output"
RESCUE_RESULTS = RESCUE_DIR / RESULTS_FILE
PROMOTED_DIR = Path("promoted")


def summary_path(workdir: Path | str, stage: str) -> Path:
    """`WORKDIR/<stage>/summary.json`: present once the stage finished."""
    return Path(workdir) / stage / SUMMARY_FILE


# --------------------------------------------------------------------------- the termination message

TERMINATION_LOG = "/dev/termination-log"
"""Where the operator asks the kubelet to read a stage container's termination message."""
TERMINATION_MESSAGE_LIMIT = 4096
"""The kubelet keeps at most this many bytes of a termination message: the wire summary fits in it."""

# --------------------------------------------------------------------------- pod env (set by the operator)

TERMINATION_MESSAGE_PATH_ENV = "FORGETLESS_TERMINATION_MESSAGE_PATH"
"""Where a stage writes its wire summary (unset locally: none written)."""
METRICS_PORT_ENV = "FORGETLESS_METRICS_PORT"
"""The trainer's /metrics port (unset: no server). Every stage serves it: the operator reads a running
stage's progress there (status.trainerStatus)."""
METRICS_ADDRESS_ENV = "FORGETLESS_METRICS_ADDRESS"
"""The address the trainer's /metrics binds (unset: all interfaces, as in a pod; a node emulation that
runs several pods on one host gives each pod its own)."""
NAMESPACE_ENV = "FORGETLESS_NAMESPACE"
"""The FineTuneJob's namespace (metric label); the operator's own namespace in the operator pod."""
JOB_ENV = "FORGETLESS_JOB"
"""The FineTuneJob's name (metric label)."""
STAGE_ENV = "FORGETLESS_STAGE"
"""The stage a pod runs (for whoever reads the pod; the stage itself takes it from its argv)."""
CACHE_DIR_ENV = "FORGETLESS_CACHE_DIR"
"""The baseline cache directory (forgetless.baseline_cache)."""
MODEL_CACHE_DIR_ENV = "FORGETLESS_MODEL_CACHE_DIR"
"""Converted GGUF models (forgetless.model_sources)."""

# --------------------------------------------------------------------------- env a user (or the image) may set

PVC_ROOT_ENV = "FORGETLESS_PVC_ROOT"
"""Where PVCs are found (default /mnt/pvc, where the operator mounts them); forgetless.locations."""
CONFIGMAP_ROOT_ENV = "FORGETLESS_CONFIGMAP_ROOT"
"""Where ConfigMaps are found (default /etc/forgetless/configmaps); forgetless.locations."""
THREADS_ENV = "FORGETLESS_THREADS"
"""Torch's CPU threads (forgetless_trainer.threads)."""
LMEVAL_INCLUDE_PATH_ENV = "FORGETLESS_LMEVAL_INCLUDE_PATH"
"""A folder of custom lm-eval task YAML (forgetless_trainer.evaluation.lmeval)."""
RENDEZVOUS_TIMEOUT_ENV = "FORGETLESS_RENDEZVOUS_TIMEOUT_SECONDS"
"""How long multi-worker training waits for its peers (forgetless_trainer.training.distributed)."""
VERBOSE_ENV = "FORGETLESS_VERBOSE"
"""`1`: keep the libraries' own output (forgetless_trainer.quiet)."""
TRAINER_IMAGE_ENV = "FORGETLESS_TRAINER_IMAGE"
"""The operator's default trainer image (the chart sets it)."""
