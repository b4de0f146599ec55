"""Whether two runs share their compiled programs: the check behind each task's ``program_task``."""

import json

import jax
import numpy as np


def compile_s(res) -> float:
    """Seconds a run spent compiling (its ``timing`` attribute)."""
    return json.loads(res.attrs["timing"])["compile_s"]


def second_run_compiles_nothing(go, a, b):
    """``go(a)`` then ``go(b)`` from empty caches: the second compiles nothing, and its values equal those of ``go(b)``
    compiled alone (bit for bit: one program, one backend). Returns the two runs, for the caller to check that ``b``
    still trained on its own arrays."""
    jax.clear_caches()
    first, second = go(a), go(b)
    assert compile_s(first) > 0 and compile_s(second) == 0
    jax.clear_caches()
    fresh = go(b)
    assert compile_s(fresh) > 0
    np.testing.assert_array_equal(second["loss"].values, fresh["loss"].values)
    return first, second
