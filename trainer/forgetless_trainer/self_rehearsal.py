"""Self-rehearsal: general data in the base model's own words, made by the baseline stage.

Self-synthesized rehearsal (Huang et al., 2024): the general data mixed into fine-tuning are the
base model's own greedy answers to general prompts, so rehearsing them pulls the tuned model back
towards what *it* did before, not towards some other model's style. For every model but the tiny
world this is the default general data (forgetless.general_data).

How
    The first `size` prompts of the pool (`dataset.selfRehearsal.prompts`, default
    `bundled:rehearsal-prompts-en`; JSONL records with a string `prompt`) are answered greedily
    through the job's prompt format (the chat template when the model or the job has one, else the
    raw `prompt =>` format), batched like the evaluator (forgetless_trainer.evaluation.evaluator).
    Only answers that ended on their own (end of turn / EOS within `maxNewTokens`) and are not empty
    are kept: the data never teaches cut-off replies. They are kept as the model wrote them, wrong
    ones included: rehearsal preserves behaviour, it does not teach facts.
Where
    WORKDIR/baseline/self_rehearsal.jsonl (chat records, what training reads) and
    self_rehearsal.json beside it (how they were made). Cached across jobs as
    `<cache>/rehearsal/r-<key>.jsonl` (+ `.json`), `<cache>` being the parent of the baseline cache
    directory (FORGETLESS_CACHE_DIR; on the output volume in a cluster), keyed by (model id and
    version, the prompts answered, maxNewTokens, the chat template the prompts are rendered with,
    REHEARSAL_VERSION). Generated
    once, by the baseline stage; train pods (every rank) read the work-dir file.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

from forgetless import atomic, baseline_cache, locations
from forgetless.api.schema import DataSource, FineTuneJobSpec
from forgetless.contract import SELF_REHEARSAL, SELF_REHEARSAL_META
from forgetless.errors import StageError
from forgetless.general_data import GeneralData, forecast_reference, general_data

REHEARSAL_VERSION = "1"
"""Bump when how answers are generated or kept changes."""

MIN_KEPT = 16
"""Fewer kept answers than this is an input error (a budget too small for the model's answers)."""

FIELD = "dataset.selfRehearsal"


def cache_root() -> Path:
    return baseline_cache.cache_dir().parent / "rehearsal"


def read_prompts(source: DataSource, size: int, base_dir: Path | None = None) -> list[str]:
    """The first `size` prompts of the pool; errors name dataset.selfRehearsal.prompts."""
    from forgetless_trainer import data as D

    where = f"{FIELD}.prompts"
    try:
        path = locations.resolve_path(source.path, pvc=source.pvc, config_map=source.config_map, kind="data",
                                      base_dir=base_dir)
    except LookupError as exc:
        raise StageError(f"{where}.path: {exc}") from exc
    prompts: list[str] = []
    for file in D.jsonl_files(path, where):
        for line, record in D.jsonl_records(file):
            prompt = record.get("prompt") if isinstance(record, dict) else None
            if not isinstance(prompt, str) or not prompt.strip():
                raise StageError(f'{line}: a rehearsal prompt record needs a non-empty string "prompt" '
                                 f"({where} is a JSONL of {{\"prompt\": ...}})")
            prompts.append(prompt)
            if len(prompts) == size:
                return prompts
    if len(prompts) < MIN_KEPT:
        raise StageError(f"{where}: {path} holds {len(prompts)} prompts; self-rehearsal needs at least {MIN_KEPT}")
    return prompts


def rehearsal_key(model_id: str, model_version: str, prompts: list[str], max_new_tokens: int,
                  prompt_format: dict[str, Any] | None) -> str:
    return "r-" + baseline_cache.document_digest({
        "model": model_id, "version": model_version, "prompts": prompts, "maxNewTokens": max_new_tokens,
        "format": prompt_format, "rehearsalVersion": REHEARSAL_VERSION})


def prompt_format(spec: FineTuneJobSpec, base_dir: Path | None = None) -> dict[str, Any]:
    """What decides how the prompts are rendered: the chat template the job resolves (the model's own,
    dataset.chatTemplate, or ChatML for `format: chat`), or none (the raw format). Read from the
    tokenizer alone, so jobs that render the same way share one cache entry whatever dataset.format says."""
    from forgetless_trainer.chat import resolve_template
    from forgetless_trainer.modeling import load_base_tokenizer

    return {"chatTemplate": resolve_template(load_base_tokenizer(spec.model, base_dir), spec.dataset, base_dir)}


def kept_records(prompts: list[str], answers: list[Any]) -> list[dict[str, Any]]:
    """Chat records of the answers that ended on their own and say something."""
    return [{"messages": [{"role": "user", "content": p}, {"role": "assistant", "content": a.text}]}
            for p, a in zip(prompts, answers) if a.ended and a.text]


def generate(model: Any, tokenizer: Any, prompts: list[str], max_new_tokens: int, *, batch_size: int = 32,
             progress: Callable[[int, int], None] | None = None) -> list[Any]:
    """The model's greedy Answers (text, ended) to `prompts` through its prompt format."""
    from forgetless_trainer.chat import chat_format
    from forgetless_trainer.evaluation.evaluator import GenerationRequest, generate_answers, item_context

    import torch

    fmt = chat_format(tokenizer)
    requests = [GenerationRequest(tokenizer(item_context(fmt, {"prompt": p}), add_special_tokens=fmt is None)["input_ids"],
                                  max_new_tokens) for p in prompts]
    was_training = getattr(model, "training", False)
    model.eval()
    try:
        with torch.no_grad():
            return generate_answers(model, tokenizer, requests, batch_size, progress)
    finally:
        if was_training:
            model.train()


def _write_jsonl(path: Path, records: list[dict[str, Any]]) -> None:
    atomic.write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


def rehearsal_choice(spec: FineTuneJobSpec) -> GeneralData | None:
    """The self-rehearsal the job needs, for training or as the forecast's reference (the reference is
    self-rehearsal whenever the general data is); None if neither."""
    choice = forecast_reference(spec)
    return choice if choice.kind == "selfRehearsal" else None


def prepare(spec: FineTuneJobSpec, workdir: Path, *, base_dir: Path | None = None,
            load_model: Callable[[], tuple[Any, Any]], log: Callable[[str], None] = print) -> dict[str, Any]:
    """Write the job's self-rehearsal data (`rehearsal_choice`) into WORKDIR (from the cache, or generated
    with the model that `load_model()` returns, then cached); return how it was made (also
    WORKDIR/baseline/self_rehearsal.json)."""
    from forgetless_trainer.evaluation.runner import model_identity
    from forgetless_trainer.progress import StageProgress

    choice = rehearsal_choice(spec)
    assert choice is not None, "the job needs no self-rehearsal"
    settings = choice.rehearsal
    prompts = read_prompts(choice.prompts, settings.size, base_dir)
    model_id, version = model_identity(spec.model, base_dir)
    key = rehearsal_key(model_id, version, prompts, settings.max_new_tokens, prompt_format(spec, base_dir))
    cached_data, cached_meta = cache_root() / f"{key}.jsonl", cache_root() / f"{key}.json"
    meta: dict[str, Any]
    if cached_data.is_file() and cached_meta.is_file():
        from forgetless_trainer.data import jsonl_records

        records = [record for _, record in jsonl_records(cached_data)]
        meta = json.loads(cached_meta.read_text(encoding="utf-8"))
        meta["cached"] = True
    else:
        model, tokenizer = load_model()
        began = time.monotonic()
        display: StageProgress | None = None

        def report(done: int, total: int) -> None:
            nonlocal display
            if display is None:
                display = StageProgress("baseline", total, unit="rehearsal answer", started=began)
            display.update(done)

        try:
            answers = generate(model, tokenizer, prompts, settings.max_new_tokens, progress=report)
        finally:
            if display is not None:
                display.close()
        records = kept_records(prompts, answers)
        meta = {"key": key, "model": spec.model.name, "prompts": len(prompts), "kept": len(records),
                "maxNewTokens": settings.max_new_tokens, "pool": choice.prompts.path or "configMap",
                "seconds": round(time.monotonic() - began, 1)}
        if len(records) < MIN_KEPT:
            raise StageError(
                f"{FIELD}: only {len(records)} of {len(prompts)} answers of the base model ended within "
                f"maxNewTokens {settings.max_new_tokens} (at least {MIN_KEPT} needed): raise "
                f"{FIELD}.maxNewTokens, or name your own general data in dataset.general")
        cache_root().mkdir(parents=True, exist_ok=True)
        _write_jsonl(cached_data, records)
        atomic.write_text(cached_meta, json.dumps(meta, sort_keys=True))
        meta["cached"] = False
    workdir = Path(workdir)
    (workdir / SELF_REHEARSAL).parent.mkdir(parents=True, exist_ok=True)
    _write_jsonl(workdir / SELF_REHEARSAL, records)
    atomic.write_text(workdir / SELF_REHEARSAL_META, json.dumps(meta, sort_keys=True))
    log(line(meta))
    return meta


def line(meta: dict[str, Any]) -> str:
    how = "from the cache" if meta.get("cached") else "generated"
    return (f"general data: self-rehearsal, {meta['kept']} of {meta['prompts']} answers of the base model kept "
            f"(those that ended on their own within {meta['maxNewTokens']} tokens), {how}; generation took "
            f"{meta['seconds']:.0f} s ({meta['key']})")


def read_meta(workdir: Path) -> dict[str, Any] | None:
    path = Path(workdir) / SELF_REHEARSAL_META
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def has_rehearsal(workdir: Path | None) -> bool:
    return workdir is not None and (Path(workdir) / SELF_REHEARSAL).is_file()


def general_examples(spec: FineTuneJobSpec, workdir: Path | None, base_dir: Path | None = None,
                     choice: GeneralData | None = None) -> list[Any]:
    """General data as Examples (tag `general`): the job's (`choice` None) or `choice`: named data, the
    tiny world's, or the self-rehearsal answers the baseline stage wrote into WORKDIR."""
    from forgetless_trainer import data as D

    choice = choice or general_data(spec)
    if choice.kind != "selfRehearsal":
        field = "dataset.general" if choice.kind == "named" else "dataset.general (default)"
        return D.read_source(choice.source, None, field_name=field, base_dir=base_dir, tag="general")
    path = Path(workdir) / SELF_REHEARSAL if workdir is not None else None
    if path is None or not path.is_file():
        raise StageError(f"{FIELD}: the self-rehearsal data {path} is missing: the baseline stage writes it "
                         "(rerun the job from its baseline stage, or name dataset.general)")
    return D.read_jsonl(path, "chat", "general")


__all__ = ["MIN_KEPT", "REHEARSAL_VERSION", "general_examples", "generate", "kept_records", "line", "prepare",
           "has_rehearsal", "read_meta", "read_prompts", "rehearsal_choice", "rehearsal_key"]
