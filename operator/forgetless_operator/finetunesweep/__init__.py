"""The FineTuneSweep controller: trials as owned FineTuneJobs (reconcile.py, pure; controller.py, the I/O)."""
