"""forgetless: Kubernetes-native fine-tuning that does not break what the model already knew.

This package is the torch-free, kopf-free core: the FineTuneJob API, the gate, suites and the CLI.
The trainer (`forgetless_trainer`) and the operator (`forgetless_operator`) build on it.
"""

__version__ = "0.1.0"
