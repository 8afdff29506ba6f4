"""Exit codes of the `forgetless` CLI (each with its cause and fix in docs/troubleshooting.md)."""

OK = 0
INVALID = 1
"""A manifest or argument was rejected; nothing ran."""
USAGE = 2
"""Wrong command-line usage (argparse's own code)."""
GATE_BLOCKED = 3
"""`forgetless run`: the pipeline finished but the regression gate blocked promotion."""
FAILED = 4
"""A stage failed at run time (missing data, training error, ...); see the message."""
NO_TASK_GAIN = 5
"""`forgetless run`: the model kept its skills but showed no evidence of learning the task (gate
verdict NoTaskGain); nothing was promoted."""
INTERRUPTED = 130
"""Ctrl-C; the work dir keeps everything finished so far and `run` resumes from it."""
