"""Keep the console to forgetless' own progress: silence the libraries' noise in stage processes.

What a new user would otherwise see while a stage runs, none of it actionable:
- transformers' `Loading weights` / `Writing model shards` progress bars and advisory warnings;
- DeepSpeed's INFO/WARNING log lines, among them "Setting accelerator to CPU. If you have GPU …"
  (it is only said when no accelerator is named: on a machine without CUDA, DS_ACCELERATOR=cpu
  names it);
- FutureWarning / DeprecationWarning from torch, transformers, peft, DeepSpeed and lm-eval
  (deprecated calls inside those libraries, not in the user's job);
- torch's "Failed to initialize NumPy" (numpy is a dependency of the trainer extra now);
- DeepSpeed's `print` of "DeepSpeed deepspeed_shm_comm_op built successfully" at every
  `init_distributed` (`library_stdout()` around that call).

`silence()` is called first thing by the stage entry points (`forgetless stage|run|evaluate`,
`run_stage`), before torch or transformers are imported where possible. Set FORGETLESS_VERBOSE=1 to
keep everything. Errors still surface: only warnings and info go, and only from those libraries.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import warnings

from forgetless.contract import VERBOSE_ENV

LIBRARIES = r"(torch|transformers|peft|deepspeed|lm_eval|accelerate|huggingface_hub|datasets)(\.|$)"
_done = False


def silence() -> None:
    global _done
    if _done or os.environ.get(VERBOSE_ENV) == "1":
        return
    _done = True
    for key, value in (
        ("TRANSFORMERS_VERBOSITY", "error"),
        ("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1"),
        ("HF_HUB_DISABLE_PROGRESS_BARS", "1"),
        ("TOKENIZERS_PARALLELISM", "false"),
        ("DATASETS_VERBOSITY", "error"),
    ):
        os.environ.setdefault(key, value)
    for category in (FutureWarning, DeprecationWarning, UserWarning):
        warnings.filterwarnings("ignore", category=category, module=LIBRARIES)
    warnings.filterwarnings("ignore", message=r"Failed to initialize NumPy")
    # warnings attributed to a caller outside the library (stacklevel) but about library APIs
    warnings.filterwarnings("ignore", category=FutureWarning, message=r".*(deprecated|will be removed).*")
    warnings.filterwarnings("ignore", category=DeprecationWarning, message=r".*(deprecated|will be removed).*")
    try:
        import torch
    except ImportError:
        return
    if "DS_ACCELERATOR" not in os.environ and not torch.cuda.is_available():
        os.environ["DS_ACCELERATOR"] = "cpu"
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:
        pass
    quiet_deepspeed()


@contextlib.contextmanager
def library_stdout():
    """Drop what a library `print`s to stdout inside the block (kept with FORGETLESS_VERBOSE=1, or when
    `silence()` did not run). Only for calls that print chatter, never results."""
    if not _done:
        yield
        return
    with contextlib.redirect_stdout(io.StringIO()):
        yield


def quiet_deepspeed() -> None:
    """DeepSpeed sets its logger's level when it is imported: lower it afterwards (and now if loaded).
    Does nothing unless `silence()` ran (tests and library users keep DeepSpeed's defaults)."""
    if not _done:
        return
    for name in ("DeepSpeed", "deepspeed"):
        logging.getLogger(name).setLevel(logging.ERROR)
    if "deepspeed" in sys.modules:
        try:
            from deepspeed.utils import logger

            logger.setLevel(logging.ERROR)
        except ImportError:
            pass
