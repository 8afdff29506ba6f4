"""The features of the FineTuneJob reconcile, one small module each, each saying what it reads (a
`reads.Concern`) and what it decides (functions over the pass, `state.JobPass`):

- `baseline_cache`: skip the baseline on a cache hit, record a new baseline (the cache ConfigMap);
- `hand_off`: point a KServe InferenceService at the promoted model (the InferenceService);
- `progress`: status.trainerStatus, settled by reconciles and read live from the running stage's pod;
- `group_restart`: restart a multi-worker group as a new attempt, delete superseded attempts;
- `run_controls`: suspend/resume, activeDeadlineSeconds, ttlSecondsAfterFinished.
"""
