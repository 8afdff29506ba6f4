"""The forgetless operator: kopf handlers (handlers.py) feed two controllers (finetunejob/,
finetunesweep/, composed in runtime.py) built on a small generic controller kit (kit/), each around a
pure reconcile function. Never imports torch. Layout: docs/architecture.md."""
