"""The FineTuneJob API: defaults from the seed's rules, and bad manifests rejected with the field named."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from forgetless.api.manifests import ManifestError, load_jobs, validate_document
from forgetless.api.schema import FineTuneJobSpec

REPO = Path(__file__).resolve().parents[2]


def test_defaults_follow_the_seed_rules(manifest):
    job = validate_document(manifest())
    spec = job.spec
    assert spec.method.type == "lora"
    assert spec.learning_rate() == 2e-4
    assert spec.mitigation.data_mixing.general_fraction == 0.2
    assert spec.dataset.general is None  # the default follows the model: forgetless.general_data
    from forgetless.general_data import general_data

    assert general_data(spec).source.path == "bundled:general"  # the manifest's model is the tiny world
    assert spec.regression.suite.path == "bundled:world-v1"
    assert spec.regression.on_regression == "Block"
    full = validate_document(manifest(spec={"method": {"type": "full"}}))
    assert full.spec.learning_rate() == 2e-5
    explicit = validate_document(manifest(spec={"training": {"learningRate": 1e-3}}))
    assert explicit.spec.learning_rate() == 1e-3


def test_wire_form_round_trips(manifest):
    job = validate_document(manifest(spec={"mitigation": {"ewc": {"lambda": 50}}, "method": {"type": "full"}}))
    wire = job.to_wire()
    assert wire["spec"]["mitigation"]["ewc"]["lambda"] == 50
    assert wire["spec"]["mitigation"]["dataMixing"]["generalFraction"] == 0.2
    assert validate_document(wire) == job


def test_every_example_is_valid():
    examples = sorted((REPO / "examples").glob("*.yaml"))
    assert len(examples) >= 6
    for path in examples:
        if "kind: FineTuneSweep" in path.read_text():
            continue  # sweeps: tests/unit/test_sweep_api.py
        assert load_jobs(path), path


# (name, patch applied to a valid manifest or a whole replacement document, field the message must name)
BAD: list[tuple[str, object, str]] = [
    ("not a mapping: list", ["a", "b"], "(document)"),
    ("not a mapping: string", "just text", "(document)"),
    ("not a mapping: number", 42, "(document)"),
    ("wrong apiVersion group", {"apiVersion": "batch/v1"}, "apiVersion"),
    ("unsupported version", {"apiVersion": "forgetless.dev/v2"}, "apiVersion"),
    ("wrong kind", {"kind": "Job"}, "kind"),
    ("missing metadata", {"metadata": None}, "metadata"),
    ("uppercase name", {"metadata": {"name": "Bad_Name"}}, "metadata.name"),
    ("name too long", {"metadata": {"name": "a" * 41}}, "metadata.name"),
    ("missing spec", {"spec": None}, "spec"),
    ("missing model", {"spec": {"model": None}}, "spec.model"),
    ("model name empty", {"spec": {"model": {"name": ""}}}, "spec.model.name"),
    ("model is a string", {"spec": {"model": "bundled:tiny-world"}}, "spec.model"),
    ("missing dataset task", {"spec": {"dataset": {"task": None, "format": "chat"}}}, "spec.dataset.task"),
    ("task with no source", {"spec": {"dataset": {"task": {"path": None}}}}, "spec.dataset.task"),
    ("task with two sources", {"spec": {"dataset": {"task": {"path": "a", "configMap": {"name": "b"}}}}}, "spec.dataset.task"),
    ("pvc without path", {"spec": {"dataset": {"task": {"configMap": {"name": "b"}, "pvc": {"claimName": "c"}}}}}, "spec.dataset.task"),
    ("unknown data format", {"spec": {"dataset": {"format": "parquet"}}}, "spec.dataset.format"),
    ("validation fraction too big", {"spec": {"dataset": {"validationFraction": 0.9}}}, "spec.dataset.validationFraction"),
    ("unknown method", {"spec": {"method": {"type": "qlora"}}}, "spec.method.type"),
    ("lora block with full", {"spec": {"method": {"type": "full", "lora": {"r": 8}}}}, "spec.method"),
    ("lora rank zero", {"spec": {"method": {"lora": {"r": 0}}}}, "spec.method.lora.r"),
    ("lora rank a string", {"spec": {"method": {"lora": {"r": "eight"}}}}, "spec.method.lora.r"),
    ("lora dropout 1", {"spec": {"method": {"lora": {"dropout": 1.0}}}}, "spec.method.lora.dropout"),
    ("lora no target modules", {"spec": {"method": {"lora": {"targetModules": []}}}}, "spec.method.lora.targetModules"),
    ("general fraction above 0.9", {"spec": {"mitigation": {"dataMixing": {"generalFraction": 0.95}}}}, "spec.mitigation.dataMixing.generalFraction"),
    ("general fraction negative", {"spec": {"mitigation": {"dataMixing": {"generalFraction": -0.1}}}}, "spec.mitigation.dataMixing.generalFraction"),
    (
        "fractions sum to 1",
        {"spec": {"mitigation": {"dataMixing": {"generalFraction": 0.6}, "replay": {"fraction": 0.4}}}},
        "spec.mitigation",
    ),
    ("replay source with both", {"spec": {"mitigation": {"replay": {"sources": [{"path": "a", "fineTuneJob": "b"}]}}}}, "spec.mitigation.replay.sources[0]"),
    ("replay buffer zero", {"spec": {"mitigation": {"replay": {"bufferSize": 0}}}}, "spec.mitigation.replay.bufferSize"),
    ("ewc negative lambda", {"spec": {"mitigation": {"ewc": {"lambda": -1}}}}, "spec.mitigation.ewc.lambda"),
    ("ewc decay zero", {"spec": {"mitigation": {"ewc": {"decay": 0}}}}, "spec.mitigation.ewc.decay"),
    ("ewc with zero 3", {"spec": {"mitigation": {"ewc": {}}, "deepspeed": {"zeroStage": 3}}}, "spec: mitigation.ewc"),
    ("early stopping patience 0", {"spec": {"mitigation": {"earlyStopping": {"patience": 0}}}}, "spec.mitigation.earlyStopping.patience"),
    ("budget above 1", {"spec": {"mitigation": {"forgettingBudget": {"maxDrop": 2}}}}, "spec.mitigation.forgettingBudget.maxDrop"),
    ("epochs zero", {"spec": {"training": {"epochs": 0}}}, "spec.training.epochs"),
    ("negative learning rate", {"spec": {"training": {"learningRate": -1e-4}}}, "spec.training.learningRate"),
    ("learning rate a string", {"spec": {"training": {"learningRate": "fast"}}}, "spec.training.learningRate"),
    ("batch size zero", {"spec": {"training": {"batchSize": 0}}}, "spec.training.batchSize"),
    ("unknown precision", {"spec": {"training": {"precision": "fp8"}}}, "spec.training.precision"),
    ("unknown scheduler", {"spec": {"training": {"lrScheduler": "step"}}}, "spec.training.lrScheduler"),
    ("unknown training field", {"spec": {"training": {"lr": 1e-4}}}, "spec.training.lr"),
    ("zero stage 4", {"spec": {"deepspeed": {"zeroStage": 4}}}, "spec.deepspeed.zeroStage"),
    ("offload params without zero 3", {"spec": {"deepspeed": {"offloadParams": True}}}, "spec.deepspeed"),
    ("zero workers", {"spec": {"resources": {"workers": 0}}}, "spec.resources.workers"),
    ("many workers without pvc", {"spec": {"resources": {"workers": 2}}}, "spec: resources.workers"),
    ("negative gpus", {"spec": {"resources": {"gpusPerWorker": -1}}}, "spec.resources.gpusPerWorker"),
    ("bad quantity", {"spec": {"resources": {"container": {"limits": {"memory": "lots"}}}}}, "spec.resources.container.limits.memory"),
    ("bad toleration operator", {"spec": {"resources": {"tolerations": [{"operator": "Maybe"}]}}}, "spec.resources.tolerations[0].operator"),
    ("negative category threshold", {"spec": {"regression": {"thresholds": {"maxCategoryDrop": -0.1}}}}, "spec.regression.thresholds.maxCategoryDrop"),
    ("negative mean threshold", {"spec": {"regression": {"thresholds": {"maxMeanDrop": -0.01}}}}, "spec.regression.thresholds.maxMeanDrop"),
    ("unknown category threshold", {"spec": {"regression": {"thresholds": {"perCategory": {"vibes": 0.1}}}}}, "spec.regression.thresholds.perCategory"),
    ("confidence 1", {"spec": {"regression": {"confidence": 1.0}}}, "spec.regression.confidence"),
    ("unknown onRegression", {"spec": {"regression": {"onRegression": "Ignore"}}}, "spec.regression.onRegression"),
    ("suite with two sources", {"spec": {"regression": {"suite": {"path": "a", "lmEvalTasks": ["arc_easy"]}}}}, "spec.regression.suite"),
    ("suite with nothing", {"spec": {"regression": {"suite": {"lmEvalTasks": []}}}}, "spec.regression.suite"),
    ("lm-eval entry with an unknown category", {"spec": {"regression": {"suite": {"lmEvalTasks": ["arc_easy", "mmlu:nonsense"]}}}},
     "spec.regression.suite.lmEvalTasks"),
    ("negative deadline", {"spec": {"activeDeadlineSeconds": 0}}, "spec.activeDeadlineSeconds"),
    ("negative backoff", {"spec": {"backoffLimit": -1}}, "spec.backoffLimit"),
    ("suspend not a bool", {"spec": {"suspend": "sometimes"}}, "spec.suspend"),
    ("unknown top-level spec field", {"spec": {"epochs": 3}}, "spec.epochs"),
    ("hand-off service with a bad name", {"spec": {"output": {"handOff": {"inferenceService": {"name": "Bad_Name"}}}}},
     "spec.output.handOff.inferenceService.name"),
    ("hand-off service without a name", {"spec": {"output": {"handOff": {"inferenceService": {}}}}},
     "spec.output.handOff.inferenceService.name"),
    ("unknown hand-off target", {"spec": {"output": {"handOff": {"slack": {"channel": "#ml"}}}}}, "spec.output.handOff.slack"),
    ("adapter-only hand-off of a full fine-tune", {"spec": {"method": {"type": "full"}, "output": {
        "handOff": {"inferenceService": {"name": "bot", "adapterOnly": True}}}}}, "spec"),
    ("hand-off without promotion", {"spec": {"output": {"promote": False, "handOff": {"inferenceService": {"name": "bot"}}}}},
     "spec"),
    ("mlflow hand-off without a registered model", {"spec": {"output": {"handOff": {"mlflow": {}}}}},
     "spec.output.handOff.mlflow.registeredModel"),
    ("mlflow alias reserved", {"spec": {"output": {"handOff": {"mlflow": {"registeredModel": "m", "alias": "v3"}}}}},
     "spec.output.handOff.mlflow.alias"),
    ("mlflow model name with a slash", {"spec": {"output": {"handOff": {"mlflow": {"registeredModel": "team/m"}}}}},
     "spec.output.handOff.mlflow.registeredModel"),
    ("mlflow alias with spaces", {"spec": {"output": {"handOff": {"mlflow": {"registeredModel": "m", "alias": "bad alias!"}}}}},
     "spec.output.handOff.mlflow.alias"),
    # checks that used to fire only at run time, after the baseline stage
    ("all-linear with module names", {"spec": {"method": {"type": "lora", "lora": {"targetModules": ["all-linear", "q_proj"]}}}},
     "spec.method.lora.targetModules"),
    ("ewc previous without online", {"spec": {"mitigation": {"ewc": {"previous": {"fineTuneJob": "earlier"}}}}},
     "spec.mitigation.ewc.previous"),
    ("optimizer offload without ZeRO", {"spec": {"deepspeed": {"zeroStage": 0, "offloadOptimizer": True}}},
     "spec.deepspeed.offloadOptimizer"),
    ("early stopping without validation data",
     {"spec": {"dataset": {"task": {"path": "t.jsonl"}, "validationFraction": 0.0}, "mitigation": {"earlyStopping": {}}}},
     "spec"),
    ("kl budget without maxKL", {"spec": {"mitigation": {"forgettingBudget": {"signal": "kl"}}}},
     "spec.mitigation.forgettingBudget.maxKL"),
    ("self-distillation without general data",
     {"spec": {"mitigation": {"dataMixing": {"generalFraction": 0.0}, "selfDistillation": {}}}},
     "spec.mitigation.selfDistillation"),
    ("self-distillation with packing", {"spec": {"mitigation": {"selfDistillation": {}}, "training": {"packing": True}}},
     "spec"),
    ("kl budget with maxKL 0", {"spec": {"mitigation": {"forgettingBudget": {"signal": "kl", "maxKL": 0}}}},
     "spec.mitigation.forgettingBudget.maxKL"),
    ("unknown budget signal", {"spec": {"mitigation": {"forgettingBudget": {"signal": "loss"}}}},
     "spec.mitigation.forgettingBudget.signal"),
]


def _apply(base: dict, patch: object) -> object:
    if not isinstance(patch, dict):
        return patch
    out = dict(base)
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _apply(out[key], value)
        else:
            out[key] = value
    return out


def test_there_are_at_least_forty_bad_manifests():
    assert len(BAD) >= 40


@pytest.mark.parametrize("name,patch,field", BAD, ids=[b[0] for b in BAD])
def test_bad_manifest_is_rejected_naming_the_field(manifest, name, patch, field):
    document = _apply(manifest(), patch)
    with pytest.raises(ManifestError) as caught:
        validate_document(document)
    lines = caught.value.lines
    assert lines and all("Traceback" not in line for line in lines)
    assert any(line.startswith(field) or f" {field}" in line or line.startswith(field + ":") for line in lines), lines


def test_validate_cli_reports_each_document_and_exits_1(tmp_path, manifest):
    good = manifest()
    bad = _apply(manifest(), {"spec": {"training": {"batchSize": 0}}})
    path = tmp_path / "jobs.yaml"
    path.write_text(yaml.safe_dump_all([good, bad, ["not", "a", "mapping"]]))
    proc = subprocess.run(
        [sys.executable, "-m", "forgetless_cli", "validate", str(path)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 1
    assert f"{path}#1: spec.training.batchSize" in proc.stderr
    assert f"{path}#2: (document): a FineTuneJob manifest must be a mapping" in proc.stderr
    assert f"{path}#0" not in proc.stderr
    assert "Traceback" not in proc.stderr


def test_validate_cli_says_which_general_data_each_job_uses(tmp_path, manifest):
    world = manifest(metadata={"name": "world"})
    chat = _apply(manifest(metadata={"name": "chat"}), {"spec": {"model": {"name": "bundled:smollm2-135m-instruct"}}})
    named = _apply(manifest(metadata={"name": "named"}), {"spec": {"dataset": {"general": {"path": "mine.jsonl"}}}})
    path = tmp_path / "jobs.yaml"
    path.write_text(yaml.safe_dump_all([world, chat, named]))
    proc = subprocess.run(
        [sys.executable, "-m", "forgetless_cli", "validate", str(path)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert "  world: general data: bundled:general (the tiny world's own sentences" in proc.stdout
    assert "  chat: general data: self-rehearsal: the base model's own answers to the first 256 prompts" in proc.stdout
    assert "  named: general data: mine.jsonl (dataset.general)" in proc.stdout


@pytest.mark.parametrize(
    "content,expected",
    [
        ("a: [unclosed", "not valid YAML/JSON"),
        ("", "holds no document"),
    ],
)
def test_unreadable_files_are_reported(tmp_path, content, expected):
    path = tmp_path / "job.yaml"
    path.write_text(content)
    with pytest.raises(ManifestError) as caught:
        load_jobs(path)
    assert expected in str(caught.value)
    with pytest.raises(ManifestError, match="no such file"):
        load_jobs(tmp_path / "missing.yaml")


def test_unknown_field_message_lists_allowed_fields(manifest):
    with pytest.raises(ManifestError) as caught:
        validate_document(_apply(manifest(), {"spec": {"method": {"type": "lora", "rank": 8}}}))
    assert "unknown field 'rank' (allowed: lora, type)" in str(caught.value)


def test_spec_model_is_the_source_of_cross_field_rules():
    with pytest.raises(ValueError):
        FineTuneJobSpec.model_validate(
            {"model": {"name": "m"}, "dataset": {"task": {"path": "p"}}, "resources": {"workers": 3}}
        )
