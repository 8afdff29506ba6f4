"""The forgetless operator: kopf handlers around a pure reconcile function. Never imports torch."""
