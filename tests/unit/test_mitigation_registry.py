"""The registry picks mitigations from the spec, in run order."""

from __future__ import annotations

from forgetless import registry
from forgetless.api.schema import parse_job
from forgetless_trainer import mitigations
from forgetless_trainer.mitigations.base import Mitigation


def test_defaults_are_lora_with_general_mixing(manifest):
    spec = parse_job(manifest()).spec
    assert (spec.method.type, mitigations.names(spec)) == ("lora", ["data_mixing"])


def test_everything_on_in_run_order(manifest):
    spec = parse_job(manifest(spec={
        "method": {"type": "full"},
        "mitigation": {"dataMixing": {"generalFraction": 0.0}, "replay": {}, "ewc": {}, "earlyStopping": {},
                       "forgettingBudget": {}},
    })).spec
    built = mitigations.build(spec, probe=lambda model, tok: {"format": 1.0})
    assert [m.name for m in built] == ["replay", "ewc", "early_stopping", "forgetting_budget"]
    mixed = parse_job(manifest(spec={"mitigation": {"selfDistillation": {}, "ewc": {}}})).spec
    assert [m.name for m in mitigations.build(mixed)] == ["data_mixing", "ewc", "self_distillation"]
    assert all(isinstance(m, Mitigation) for m in built)
    assert built[-1].probe is not None and built[2].patience == 3


def test_every_registry_entry_builds_its_named_mitigation(manifest):
    spec = parse_job(manifest(spec={"mitigation": {"replay": {}, "ewc": {}, "earlyStopping": {}, "forgettingBudget": {},
                                                   "selfDistillation": {}}})).spec
    assert set(mitigations.REGISTRY) == set(type(spec.mitigation).model_fields)  # one entry per spec block
    for name in mitigations.REGISTRY:
        assert registry.build(mitigations.REGISTRY, name, spec, {"probe": None, "factory": None}).name == name


def test_methods_say_whether_base_weights_train(manifest):
    from forgetless_trainer.methods import method_for

    lora = method_for(parse_job(manifest()).spec)
    full = method_for(parse_job(manifest(spec={"method": {"type": "full"}})).spec)
    assert (lora.name, lora.trains_base_weights) == ("lora", False)
    assert (full.name, full.trains_base_weights) == ("full", True)


def test_a_method_is_not_a_mitigation(manifest):
    from forgetless_trainer.methods import REGISTRY, Method

    for name in REGISTRY:
        method = registry.resolve(REGISTRY, name)
        assert issubclass(method, Method) and not issubclass(method, Mitigation) and method.name == name


def test_every_stage_is_registered_in_pipeline_order():
    from forgetless.lifecycle import STAGES
    from forgetless_trainer.stages import REGISTRY
    from forgetless_trainer.stages.base import Stage

    assert tuple(REGISTRY) == tuple(STAGES)
    for name in REGISTRY:
        stage = registry.resolve(REGISTRY, name)
        assert issubclass(stage, Stage) and stage.name == name


def test_an_unknown_name_says_what_is_registered():
    import pytest

    with pytest.raises(KeyError, match="choose one of lora, full"):
        registry.resolve({"lora": "x:Y", "full": "x:Z"}, "qlora")
