"""The training loop: `train(job, workdir)` runs one FineTuneJob's training on this rank.

Order of work:
1. ranks and process group (distributed.py), seeds (python, torch) from `training.seed`;
2. base model + tokenizer (modeling.py), task data split into train/validation (data.py);
3. the method (methods.method_for, built once) picks the trainable parameters, then the mitigations
   from the spec (mitigations.build): EWC estimates its Fisher, data mixing / replay add their
   share of every epoch;
4. torch AdamW + LambdaLR schedule → `deepspeed.initialize` with the generated config;
5. resume from the newest complete checkpoint if there is one (weights, optimizer, scheduler,
   data position, RNG, mitigation states);
6. steps: `gradient_accumulation_steps` micro-batches of this rank's shard, loss = task loss
   (response tokens only) + mitigation loss terms (EWC), `engine.backward`, `engine.step`;
   after each step: metrics, mitigations' `on_step_end` (may stop), checkpoint every
   `checkpointIntervalSteps`;
7. final checkpoint, mitigations' `on_train_end` (replay buffer, EWC state), the output (adapter or
   full model + tokenizer) written atomically by rank 0 to WORKDIR/train/output.

General KL (training/general_kl.py): the mean per-token KL(π₀‖π) on the regression suite's general
probe items is measured at step 0, at every forgetting-budget probe and at the end (`generalKL`,
`generalKLHistory` in the summary, forgetless_train_general_kl); for full fine-tuning π₀ is cached
from the untouched model before the first step (and before a resume loads trained weights).

A step is one optimizer step. Total steps = ceil(epochs · steps_per_epoch), capped by `maxSteps`.
"""

from __future__ import annotations

import contextlib
import math
import random
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from forgetless import atomic, contract
from forgetless.api.schema import FineTuneJob
from forgetless.errors import StageError
from forgetless_trainer import data as D
from forgetless_trainer import chat, live_metrics, methods, mitigations
from forgetless_trainer.mitigations.base import Mitigation, Stop, TrainContext
from forgetless_trainer.progress import StageProgress
from forgetless_trainer.training import checkpoint, config, distributed, general_kl, knobs, packing


@dataclass
class TrainResult:
    summary: dict[str, Any]
    model: Any = None
    tokenizer: Any = None
    engine: Any = None
    mitigations: list[Mitigation] = field(default_factory=list)


def _read_general(job: FineTuneJob, workdir: Path, base_dir: Path | None) -> Callable[[], list[D.Example]]:
    """The job's general data (forgetless.general_data): named, the tiny world's, or the self-rehearsal
    answers the baseline stage wrote into the work dir."""
    def load() -> list[D.Example]:
        from forgetless_trainer.self_rehearsal import general_examples

        return general_examples(job.spec, workdir, base_dir)

    return load


class Trainer:
    """One rank's training run; also the `TrainerView` mitigations see."""

    def __init__(
        self,
        job: FineTuneJob,
        workdir: Path,
        *,
        base_dir: Path | None = None,
        probe: Callable[[Any, Any], dict[str, float]] | None = None,
        after_step: Callable[[int], None] | None = None,
        progress_stream=None,
    ):
        self.job = job
        self.spec = job.spec
        self.workdir = Path(workdir)
        self.base_dir = base_dir
        self.probe = probe
        self.after_step = after_step
        self.progress_stream = progress_stream
        self.step = 0
        self.steps_taken = 0
        """Optimizer steps actually taken (a rewind sets `step` back; this only grows)."""
        self.position = (0, 0)
        """(epoch, step in epoch) after the last step: where the data stands."""
        self.engine = None
        self.replan_needed = False
        self.rewind_to: tuple[int, tuple[int, int]] | None = None
        self.metrics = live_metrics.TrainMetrics(job.metadata.name, job.metadata.namespace)
        self.kl: general_kl.GeneralKL | None = None
        self.kl_note: str | None = None
        self.kl_history: list[tuple[int, float]] = []

    # ------------------------------------------------------------------ TrainerView

    @property
    def model(self):
        return self.engine.module

    def _gathered(self, params, modifier_rank=None):
        if self.spec.deepspeed.zero_stage == 3:
            import deepspeed

            return deepspeed.zero.GatheredParameters(params, modifier_rank=modifier_rank)
        return contextlib.nullcontext()

    def _trainable(self) -> list[tuple[str, Any]]:
        return [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]

    def snapshot(self) -> dict[str, Any]:
        named = self._trainable()
        with self._gathered([p for _, p in named]):
            return {n: p.detach().to("cpu", copy=True) for n, p in named}

    def weights_fingerprint(self) -> str:
        """A cheap fingerprint of this rank's trainable weights (float64 sum and sum of squares per
        tensor, hashed): every rank of a group must report the same one (each rank writes it to its own
        pod's termination message), whatever the model's size. All ranks call it (ZeRO-3 gathers)."""
        import hashlib

        import torch

        named = self._trainable()
        digest = hashlib.sha256()
        with self._gathered([p for _, p in named]), torch.no_grad():
            for name, param in named:
                values = param.detach().double()
                digest.update(f"{name}:{float(values.sum()):.17g}:{float((values * values).sum()):.17g};".encode())
        return "sha256:" + digest.hexdigest()[:32]

    def restore(self, snapshot: dict[str, Any]) -> None:
        import torch

        named = self._trainable()
        with self._gathered([p for _, p in named], modifier_rank=0), torch.no_grad():
            for n, p in named:
                p.copy_(snapshot[n].to(device=p.device, dtype=p.dtype))

    def validation_loss(self) -> float:
        """Mean token loss over the validation split (every rank computes the same value)."""
        return D.mean_token_nll(self.model, self.encoder, self.ctx.validation, self.spec.training.batch_size, self.device)

    def all_agree(self, flag: bool) -> bool:
        return distributed.any_rank(flag)

    def scale_learning_rate(self, factor: float) -> None:
        """The schedule's base rates × factor (LambdaLR rescales them every step; they are checkpointed)."""
        self.scheduler.base_lrs = [lr * factor for lr in self.scheduler.base_lrs]
        for group in self.optimizer.param_groups:
            group["lr"] *= factor

    def rewind_schedule(self, step: int) -> None:
        """Put the learning-rate schedule back to `step` (a rollback re-runs the schedule from the snapshot,
        warmup included). Checkpointed with the scheduler's state."""
        self.scheduler.last_epoch = step
        factors = [fn(step) for fn in self.scheduler.lr_lambdas]
        for group, base, factor in zip(self.optimizer.param_groups, self.scheduler.base_lrs, factors):
            group["lr"] = base * factor

    def replan(self) -> None:
        self.replan_needed = True

    def rewind(self, step: int, position: tuple[int, int]) -> None:
        """After this step, go back to `step` (data at `position`, the schedule at `step`): a rollback that
        re-runs training from a snapshot instead of spending the steps since it."""
        self.rewind_to = (step, tuple(position))

    def _apply_rewind(self) -> tuple[int, int]:
        step, (epoch, step_in_epoch) = self.rewind_to
        self.rewind_to = None
        if self.ctx.is_main:  # checkpoints beyond the snapshot belong to the abandoned run: a resume must not pick them
            for number, path in checkpoint.complete_checkpoints(self.checkpoints):
                if number > step:
                    shutil.rmtree(path, ignore_errors=True)
        distributed.barrier()
        self.step = step
        self.position = (epoch, step_in_epoch)
        self.rewind_schedule(step)
        self.message(f"rewound to step {step} (epoch {epoch}, batch {step_in_epoch})")
        return epoch, step_in_epoch

    def message(self, text: str) -> None:
        if self.progress is not None:
            self.progress.message(text)

    def general_kl(self) -> float | None:
        """Measure the mean per-token KL(π₀‖π) on the general probe items now (None when it cannot be
        measured: module doc of training/general_kl.py); recorded in the history and the live metric.
        Every rank computes the same value (ZeRO-3 needs every rank in the forward passes)."""
        if self.kl is None:
            return None
        value = self.kl.measure(self.model)
        self.kl_history.append((self.steps_taken, value))
        self.metrics.general_kl(value)
        return value

    # ------------------------------------------------------------------ setup

    def setup(self) -> None:
        import torch

        from forgetless_trainer.modeling import load_model_and_tokenizer

        spec = self.spec
        self.ranks = distributed.setup_env(spec.resources.workers)
        self.ds_config = config.deepspeed_config(spec, self.ranks.world_size)  # spec errors before any networking
        self.device = distributed.device_for(self.ranks.local_rank)
        seed = spec.training.seed
        random.seed(seed)
        torch.manual_seed(seed)
        self.progress = None

        from forgetless_trainer.evaluation.own_task import training_records

        task = training_records(spec, self.base_dir)  # the held-out records the gate scores are never trained on
        train, validation = D.split_validation(task, spec.dataset.validation_fraction, seed)
        model, tokenizer = load_model_and_tokenizer(
            spec.model, base_dir=self.base_dir, dtype=knobs.load_dtype(config.resolve_precision(spec.training.precision)),
            attn_implementation=knobs.attention_implementation(spec.training.attention),
        )
        model.to(self.device)
        if spec.training.gradient_checkpointing:
            knobs.enable_gradient_checkpointing(model)
        self.tokenizer = tokenizer
        template = chat.install_template(tokenizer, spec.dataset, self.base_dir)
        self.encoder = D.Encoder(
            tokenizer, spec.training.max_seq_length,
            chat=chat.ChatFormat(tokenizer, template) if template else None, packing=spec.training.packing,
        )
        distributed.init_process_group(self.ranks)
        self.checkpoints = self.workdir / contract.TRAIN_CHECKPOINTS
        self.resume_from = checkpoint.latest_intact(self.checkpoints, is_main=self.ranks.rank == 0,
                                                    log=lambda line: print(line, file=sys.stderr, flush=True))
        self.method = methods.method_for(spec)  # built once: the context and the checkpoints ask it
        self.ctx = TrainContext(
            job=self.job,
            workdir=self.workdir,
            rank=self.ranks.rank,
            world_size=self.ranks.world_size,
            base_dir=self.base_dir,
            tokenizer=tokenizer,
            encoder=self.encoder,
            task_train=train,
            validation=validation,
            resuming=self.resume_from is not None,
            device=self.device,
            general_loader=_read_general(self.job, self.workdir, self.base_dir),
            method=self.method,
        )
        budget = spec.mitigation.forgetting_budget
        factory = None
        if budget is not None:
            from forgetless_trainer.mitigations.forgetting_budget import suite_probe

            factory = lambda: suite_probe(self.job, budget.probe_items, self.base_dir)  # noqa: E731
        self.mitigations = mitigations.build(spec, probe=self.probe, probe_factory=factory)
        self.wants_sources = any(m.wants_sources for m in self.mitigations)
        try:
            max_length = getattr(model.config, "max_position_embeddings", None)
            self.kl = general_kl.for_job(self.job, tokenizer, base_dir=self.base_dir, max_length=max_length)
            if not self.kl.rows:
                self.kl_note = "general KL: the regression suite has no general items with a reference answer"
                self.kl = None
        except StageError as exc:
            self.kl_note = f"general KL not measured: {exc}"
        if self.kl is None and budget is not None and budget.signal == "kl":
            raise StageError(f"spec.mitigation.forgettingBudget.signal kl needs the general KL: {self.kl_note}")
        model = self.method.configure_model(model, self.ctx)  # the trainable parameters, before any mitigation
        for mitigation in self.mitigations:
            model = mitigation.configure_model(model, self.ctx)
        model.train()
        self.parts = [part for m in self.mitigations for part in m.mix_parts(self.ctx)]
        self._plan()
        self._init_engine(model)

    def _plan(self) -> None:
        """Epoch composition, steps per epoch and total steps from the current mix parts (a mitigation
        may change a part's share during training: `replan`). Total = ceil(epochs · steps/epoch), so
        the task data is seen `epochs` times whatever the mix; capped by maxSteps."""
        training = self.spec.training
        self.epoch_size, self.composition = D.epoch_plan(len(self.ctx.task_train), self.parts)
        self.steps_per_epoch = D.steps_per_epoch(
            self.epoch_size,
            world_size=self.ranks.world_size,
            batch_size=training.batch_size,
            accumulation=training.gradient_accumulation_steps,
        )
        by_epochs = math.ceil(training.epochs * self.steps_per_epoch)
        self.total_steps = min(by_epochs, training.max_steps) if training.max_steps else by_epochs
        self.capped_by_max_steps = bool(training.max_steps and training.max_steps < by_epochs)
        scheduler = getattr(self, "scheduler", None)
        if scheduler is not None:  # the schedule follows the new length (rebuilt the same way on resume)
            warmup = config.warmup_steps(self.total_steps, training.warmup_ratio)
            scheduler.lr_lambdas = [config.lr_lambda(training.lr_scheduler, self.total_steps, warmup)
                                    for _ in scheduler.lr_lambdas]

    def _init_engine(self, model) -> None:
        import deepspeed
        import torch

        spec = self.spec
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(
            params, lr=spec.learning_rate(), weight_decay=spec.training.weight_decay, betas=(0.9, 0.999), eps=1e-8
        )
        warmup = config.warmup_steps(self.total_steps, spec.training.warmup_ratio)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, config.lr_lambda(spec.training.lr_scheduler, self.total_steps, warmup)
        )
        ds_config = self.ds_config
        self.precision = "bf16" if ds_config["bf16"]["enabled"] else "fp16" if ds_config["fp16"]["enabled"] else "fp32"
        self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=model, optimizer=optimizer, lr_scheduler=scheduler, config=ds_config
        )
        self.exclude_frozen = not self.method.trains_base_weights  # lora: checkpoints hold the adapter only

    # ------------------------------------------------------------------ run

    def _client_state(self, epoch: int, step_in_epoch: int, finished: str | None, final_weights=None) -> dict[str, Any]:
        return {
            "step": self.step,
            "steps_taken": self.steps_taken,
            "epoch": epoch,
            "step_in_epoch": step_in_epoch,
            "tokens": self.tokens,
            "train_seconds": self.train_seconds + (time.perf_counter() - self.started),
            "last_loss": self.last_loss,
            "rng": checkpoint.rng_state(),
            "mitigations": {m.name: m.state_dict() for m in self.mitigations},
            "finished": finished,
            "stop_message": self.stop_message,
            "final_weights": final_weights,
            "general_kl_history": [list(h) for h in self.kl_history],
        }

    def _save_checkpoint(self, epoch: int, step_in_epoch: int, finished: str | None = None, final_weights=None) -> None:
        state = self._client_state(epoch, step_in_epoch, finished, final_weights)
        checkpoint.save(
            self.engine, self.checkpoints, self.step, state, is_main=self.ctx.is_main, exclude_frozen=self.exclude_frozen
        )
        self.last_checkpoint = self.step

    def _resume(self) -> tuple[int, int, str | None, Any]:
        if self.resume_from is None:
            return 0, 0, None, None
        _, path = self.resume_from
        try:
            state = checkpoint.load(self.engine, path, exclude_frozen=self.exclude_frozen)
        except Exception as exc:  # intact sizes but unreadable content: set it aside, fail this attempt
            # the rank that failed moves it (an exception to "rank 0 writes": a rank whose own shard is
            # unreadable may be the only one to know; the rename is atomic and a second one finds nothing)
            with contextlib.suppress(OSError):
                checkpoint.set_aside(path)
            raise StageError(f"checkpoint {path.name} could not be loaded ({str(exc).splitlines()[0][:300]}); it was "
                             f"moved aside to damaged-{path.name}, so the next attempt resumes from the one "
                             "before") from exc
        self.step = state["step"]
        self.steps_taken = state.get("steps_taken", self.step)
        self.tokens = state["tokens"]
        self.train_seconds = state["train_seconds"]
        self.last_loss = state["last_loss"]
        self.stop_message = state.get("stop_message")
        self.kl_history = [(int(s), float(v)) for s, v in state.get("general_kl_history") or []]
        for mitigation in self.mitigations:
            if mitigation.name in state["mitigations"]:
                mitigation.load_state_dict(state["mitigations"][mitigation.name])
        checkpoint.set_rng_state(state["rng"])
        self._plan()  # a controller's restored share of general data changes the plan
        self.last_checkpoint = self.step
        self.message(f"resumed from {path} (step {self.step})")
        return state["epoch"], state["step_in_epoch"], state.get("finished"), state.get("final_weights")

    def micro_step(self, batch) -> tuple[Any, Any]:
        """Forward, mitigation loss terms, backward and `engine.step()` (an optimizer step at the accumulation boundary)."""
        batch = {k: v.to(self.device) for k, v in batch.items()}
        out = self.engine(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"),
                          position_ids=batch.get("position_ids"), labels=batch["labels"], use_cache=False)
        loss = out.loss
        extra = None
        for mitigation in self.mitigations:
            term = mitigation.loss_term(self.engine.module)
            if term is not None:
                extra = term if extra is None else extra + term
        total = loss if extra is None else loss + extra
        for mitigation in self.mitigations:  # terms of the batch itself (self-distillation): not the EWC penalty
            term = mitigation.batch_loss_term(self.engine.module, batch, out.logits)
            if term is not None:
                total = total + term
        self.engine.backward(total)
        self.engine.step()
        return total.detach(), extra

    def run(self) -> TrainResult:
        spec = self.spec
        training = spec.training
        self.tokens = 0
        self.train_seconds = 0.0
        self.last_loss = float("nan")
        self.stop_message: str | None = None
        self.last_checkpoint = -1
        self.started = time.perf_counter()
        self.progress = StageProgress("train", self.total_steps, unit="step", enabled=self.ctx.is_main,
                                      stream=self.progress_stream)
        live_metrics.serve(self.ranks.local_rank)
        if self.kl_note:
            self.message(self.kl_note)
        if self.kl is not None and not general_kl.has_adapter(self.model):
            self.kl.cache_reference(self.model)  # the untouched base, before a resume loads trained weights
        epoch, step_in_epoch, finished, final_weights = self._resume()
        if self.kl is not None and not self.kl_history:
            self.general_kl()  # step 0: 0 by definition, measured (a check of the reference)
        self.position = (epoch, step_in_epoch)
        self.started = time.perf_counter()
        self.progress.start_at(self.step)
        for mitigation in self.mitigations:
            mitigation.on_train_start(self)
        stopped: Stop | None = None
        if finished in ("completed", "max_steps") and self.step < self.total_steps:
            finished = None  # epochs or maxSteps grew since (a sweep trial promoted to a longer rung): train on
        if finished is not None:
            stopped = Stop(finished, self.stop_message or "") if finished not in ("completed", "max_steps") else None
            if final_weights is not None:
                self.restore(final_weights)
        else:
            stopped, epoch, step_in_epoch = self._loop(epoch, step_in_epoch)
        reason = stopped.reason if stopped else ("max_steps" if self.capped_by_max_steps else "completed")
        final_kl = self.general_kl()  # the final weights (a stop has restored its snapshot)
        if final_kl is not None:
            self.message(f"general KL(base‖model) {final_kl:.4f} nats/token over {self.kl.tokens} answer tokens")
        if stopped:
            self.stop_message = stopped.message
            self.message(stopped.message)
        if finished is None:  # the final checkpoint marks the run finished (a restart only rewrites the output)
            self._save_checkpoint(epoch, step_in_epoch, reason, self.snapshot() if stopped else None)
        for mitigation in self.mitigations:
            mitigation.on_train_end(self)
        output = self._write_output()
        self.progress.close()
        seconds = self.train_seconds + (time.perf_counter() - self.started)
        tokens_all = distributed.sum_all(self.tokens)
        summary: dict[str, Any] = {
            "stage": "train",
            "steps": self.step,
            "stepsTaken": self.steps_taken,
            "totalSteps": self.total_steps,
            "epochs": round(self.step / self.steps_per_epoch, 4),
            "finalLoss": self.last_loss if math.isfinite(self.last_loss) else None,  # NaN is not JSON
            "stoppedReason": reason,
            "tokensPerSecond": round(tokens_all / seconds, 2) if seconds > 0 else 0.0,
            "tokens": tokens_all,
            "trainSeconds": round(seconds, 3),
            "outputPath": str(output),
            "method": spec.method.type,
            "mitigations": [self.method.name] + [m.name for m in self.mitigations],
            "worldSize": self.ranks.world_size,
            "precision": self.precision,
            "zeroStage": spec.deepspeed.zero_stage,
            "learningRate": spec.learning_rate(),
            "epochSize": self.epoch_size,
            "epochComposition": self.composition,
            "trainExamples": len(self.ctx.task_train),
            "validationExamples": len(self.ctx.validation),
        }
        if final_kl is not None:
            summary.update({
                "generalKL": round(final_kl, 6),
                "generalKLHistory": [[s, round(v, 6)] for s, v in self.kl_history[-50:]],
                "generalKLTokens": self.kl.tokens,
                "generalKLReference": self.kl.reference,
            })
        if self.stop_message:
            summary["message"] = self.stop_message
        if self.resume_from is not None:
            summary["resumedFromStep"] = self.resume_from[0]
        if self.ranks.world_size > 1:
            summary["rank"] = self.ranks.rank
            summary["weightsFingerprint"] = self.weights_fingerprint()
        summary.update(self.method.summary())
        for mitigation in self.mitigations:
            summary.update(mitigation.summary())
        return TrainResult(summary, self.engine.module, self.tokenizer, self.engine, self.mitigations)

    def _loop(self, epoch: int, step_in_epoch: int) -> tuple[Stop | None, int, int]:
        import torch

        training = self.spec.training
        accumulation = training.gradient_accumulation_steps
        window_tokens, window_start = 0, time.perf_counter()
        while self.step < self.total_steps:
            micro = self._epoch_batches(epoch)
            while step_in_epoch * accumulation < len(micro) and self.step < self.total_steps:
                losses, extra, step_tokens = [], None, 0
                for batch_examples in micro[step_in_epoch * accumulation : (step_in_epoch + 1) * accumulation]:
                    batch = self.encoder.train_batch(batch_examples)
                    if self.wants_sources:
                        batch["general"] = torch.tensor([e.source == "general" for e in batch_examples])
                    step_tokens += packing.real_tokens(batch)
                    loss, extra = self.micro_step(batch)
                    losses.append(loss)
                self.step += 1
                self.steps_taken += 1
                step_in_epoch += 1
                self.position = (epoch, step_in_epoch)
                self.tokens += step_tokens
                window_tokens += step_tokens
                self.last_loss = float(torch.stack(losses).float().mean())
                self._report(step_tokens, extra)
                if self.step % training.log_interval_steps == 0:
                    elapsed = time.perf_counter() - window_start
                    if elapsed > 0:
                        self.metrics.throughput(window_tokens * self.ranks.world_size / elapsed)
                    window_tokens, window_start = 0, time.perf_counter()
                stop = None
                for mitigation in self.mitigations:
                    stop = mitigation.on_step_end(self.step, self)
                    if stop is not None:
                        break
                if stop is not None:
                    return stop, epoch, step_in_epoch
                replanned = self.replan_needed  # a mitigation changed the mix: the rest of the epoch follows it
                if replanned:
                    self.replan_needed = False
                    self._plan()
                rewinding = self.rewind_to is not None
                if (not rewinding and self.step % training.checkpoint_interval_steps == 0
                        and self.step < self.total_steps):
                    self._save_checkpoint(epoch, step_in_epoch)
                if self.after_step is not None:
                    self.after_step(self.step)
                if rewinding:
                    epoch, step_in_epoch = self._apply_rewind()
                if replanned or rewinding:  # one rebuild, of the epoch training continues in
                    micro = self._epoch_batches(epoch)
            if step_in_epoch * accumulation >= len(micro):
                epoch, step_in_epoch = epoch + 1, 0
        return None, epoch, step_in_epoch

    def _epoch_batches(self, epoch: int) -> list:
        """This rank's micro-batches of `epoch`, composed by the current mix parts (deterministic)."""
        training = self.spec.training
        examples = D.build_epoch(self.ctx.task_train, self.parts, epoch, training.seed)
        return D.shard_micro_batches(
            examples,
            rank=self.ranks.rank,
            world_size=self.ranks.world_size,
            batch_size=training.batch_size,
            accumulation=training.gradient_accumulation_steps,
        )

    def _report(self, step_tokens: int, extra) -> None:
        lr = float(self.scheduler.get_last_lr()[0])
        norm = self.engine.get_global_grad_norm()
        norm = float(norm) if norm is not None else None
        penalty = float(extra.detach()) if extra is not None else None
        self.metrics.step(loss=self.last_loss, lr=lr, grad_norm=norm, tokens=step_tokens, ewc_penalty=penalty)
        self.progress.update(self.step, loss=self.last_loss, lr=lr, ewc=penalty)

    def _write_output(self) -> Path:
        """Adapter (LoRA) or full model + tokenizer → WORKDIR/train/output, atomically, by rank 0."""
        output = self.workdir / contract.TRAIN_OUTPUT
        model = self.engine.module
        params = list(model.parameters())
        with self._gathered(params):
            if self.ctx.is_main:
                with atomic.atomic_directory(output) as staging:
                    model.save_pretrained(str(staging))
                    self.tokenizer.save_pretrained(str(staging))
        distributed.barrier()
        return output


def train(job: FineTuneJob, workdir: Path, **options: Any) -> TrainResult:
    """Train `job` in `workdir` (resuming from its newest checkpoint); returns the summary and the model.

    Options (all keyword, see `Trainer`): `base_dir` for relative paths; `probe` replaces the
    forgetting-budget probe (tests); `after_step(step)` runs after every step and its checkpoint
    (e.g. to inject a failure); `progress_stream` where progress goes (stderr).

    With several ranks the process group is destroyed before returning (distributed.shutdown): the
    returned engine can no longer run collectives; the model's (ZeRO-1/2) weights stay usable.
    """
    trainer = Trainer(job, workdir, **options)
    trainer.setup()
    result = trainer.run()
    distributed.shutdown()
    return result
