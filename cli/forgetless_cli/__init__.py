"""The `forgetless` command line: the entry point above core, trainer and operator.

It is the only package that may import all three (lazily: a sub-command imports the trainer or the
operator inside its `main`, so `forgetless validate` never loads torch or kopf)."""
