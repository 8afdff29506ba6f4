"""Sub-commands of the `forgetless` CLI, one module each (see forgetless_cli.main)."""
