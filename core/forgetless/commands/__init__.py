"""Sub-commands of the `forgetless` CLI, one module each (see forgetless.cli)."""
