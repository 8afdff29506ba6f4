"""The FineTuneJob controller: the pure `reconcile` (reconcile.py, stages.py, features/), what it reads
(readplan.py), the children it builds (children.py), and the I/O around it (controller.py)."""
