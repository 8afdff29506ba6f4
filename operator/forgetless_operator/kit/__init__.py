"""A small controller kit: the generic machinery of a level-triggered controller, knowing nothing of
the resources it is used for (no import of `forgetless.api`, of the vocabulary or of the controllers on top).

- `client`: the async Kubernetes API client (`KubeClient`, `ApiError`);
- `queue`: `Coalescer` (one reconcile per key at a time) and `WorkQueue` (coalesced triggers, the
  skip of watch events that echo the controller's own writes by fingerprint, the first-sight body);
- `children`: `ChildFilter` (skip child watch events whose signature a reconcile already saw);
- `reads`: `SharedReads` (one GET for a burst of reconciles reading the same object);
- `events`: `EventRecorder` (core/v1 Events posted in the background, in order);
- `status`: the status subresource: the one place kopf's keys are stripped (`status_of`), the merge
  patch, `write_status`, the one `set_condition`, the one `owner_reference`, `fingerprint`;
- `peering`: kopf's peering rule for loops kopf does not pause.

The controllers (`forgetless_operator.finetunejob`, `.finetunesweep`) are built on top of it.
"""
