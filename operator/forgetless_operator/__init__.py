"""The forgetless operator: kopf handlers (handlers.py) feed a runtime (runtime.py: observe, apply,
patch) around a pure reconcile function (reconcile.py). Never imports torch."""
