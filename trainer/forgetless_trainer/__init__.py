"""The forgetless trainer: stages (baseline, train, evaluate), mitigations and the evaluator. Never imports kopf."""
