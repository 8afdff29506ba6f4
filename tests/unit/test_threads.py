"""forgetless run picks torch's thread count from the CPUs it may use; an explicit setting wins."""

from __future__ import annotations

import pytest

from forgetless_trainer.threads import choose


def test_the_usable_cpus_by_default():
    assert choose({}, cpus=3) == (3, "the CPUs this process may use; set FORGETLESS_THREADS to choose")


def test_forgetless_threads_wins_over_omp_num_threads():
    assert choose({"FORGETLESS_THREADS": "1", "OMP_NUM_THREADS": "4"}, cpus=8) == (1, "from FORGETLESS_THREADS")
    assert choose({"OMP_NUM_THREADS": "4"}, cpus=8) == (4, "from OMP_NUM_THREADS")


@pytest.mark.parametrize("value", ["0", "two", "-1"])
def test_a_bad_setting_names_the_variable(value):
    with pytest.raises(ValueError, match=f"FORGETLESS_THREADS='{value}' is not a positive whole number"):
        choose({"FORGETLESS_THREADS": value}, cpus=2)
