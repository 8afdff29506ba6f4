"""The laptop twin of the operator: `forgetless run` and `forgetless sweep` on this machine.

`pipeline` runs the stages in-process (the same `forgetless_trainer.stages.run_stage` a pod runs)
and maps the verdict to an exit code; `sweep` runs a FineTuneSweep trial by trial; `workdir` is
the local work dir and its preflight; `run_output` the console table and the local metrics
endpoint. Exit codes and tables are the CLI's business, so they live here, not in the trainer
(an engine that knows nothing of terminals). Imported lazily by the sub-commands: loads torch.
"""
