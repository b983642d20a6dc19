"""The user's own metric: ``--metric my_metric.py:score`` (or ``package.module:score``), higher is better.

Peers take the user's evaluation (NNCF's ``validation_fn``, Neural Compressor's ``eval_func``, Polygraphy's
``--check``); a budget is only as good as its metric.  The function is called once per split evaluation::

    def score(candidate: dict[str, np.ndarray], reference: dict[str, np.ndarray], extras: dict[str, Any]) -> float

* ``candidate``: every graph output of the plan being measured, by output name, the split's evaluated batches
  concatenated along axis 0 (a list of per-batch arrays for an output whose batches differ in shape);
* ``reference``: the same for the FP32 model (ONNX Runtime, the exact-semantics oracle);
* ``extras``: what the recipe's optional ``load_extras(split)`` returns (labels, boxes, transcripts, ids), plus
  ``labels`` from ``load_labels(split)`` when the recipe has one; ``{}`` otherwise.

It scores the whole split at once, so split-level metrics (mAP, WER) are computed as they are defined, not as batch
means.  It scores the search split (every probe, the float baseline, the quantizer options) and the holdout split.
A metric that raises is one error naming the user's file and line; one that returns a non-number, NaN or infinity
is refused with the value it returned.
"""

from __future__ import annotations

import hashlib
import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from trtmix.data.user_code import USER_FIX, load_function, source_identity, user_error
from trtmix.errors import TrtmixError

SIGNATURE = "score(candidate: dict[str, ndarray], reference: dict[str, ndarray], extras: dict) -> float"


def is_user_metric(name: str) -> bool:
    """True for ``FILE.py:FUNCTION`` / ``MODULE:FUNCTION`` (built-in metric names have no colon)."""
    return ":" in name


@dataclass
class UserMetric:
    """A loaded user metric and the spec it came from (its source identity keys the journal)."""

    spec: str
    function: Callable[..., Any]

    def __call__(self, candidate: dict[str, Any], reference: dict[str, Any], extras: dict[str, Any]) -> float:
        """The user's score of ``candidate``, checked to be a finite number."""
        try:
            value = self.function(candidate, reference, extras)
        except TrtmixError:
            raise
        except Exception as err:  # noqa: BLE001 - any exception in user code becomes one clear message
            raise TrtmixError(user_error(err, f"metric {self.spec}"), fix=USER_FIX) from err
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise TrtmixError(f"metric {self.spec} returned {type(value).__name__} {value!r}, not a number.",
                              expected=f"a float, higher is better: {SIGNATURE}",
                              fix="return float(...) of your score")  # fmt: skip
        if not math.isfinite(float(value)):
            raise TrtmixError(f"metric {self.spec} returned {value}.", expected="a finite float, higher is better",
                              fix="guard the metric against empty or degenerate outputs")  # fmt: skip
        return float(value)


CALLABLES: dict[str, Callable[..., Any]] = {}  # ``python:<module>.<name>`` → a function given to ``api.compile``


def register(function: Callable[..., Any]) -> str:
    """The spec a Python caller's metric function goes by (``api.compile(..., metric=function)``)."""
    name = f"python:{getattr(function, '__module__', '?')}.{getattr(function, '__qualname__', repr(function))}"
    CALLABLES[name] = function
    return name


def load_user_metric(spec: str) -> UserMetric:
    """The function ``spec`` names (imported, or registered by ``register``), checked to take three arguments."""
    function = CALLABLES.get(spec) or load_function(spec)
    try:
        inspect.signature(function).bind(None, None, None)
    except (TypeError, ValueError) as err:
        raise TrtmixError(f"metric {spec} cannot be called with (candidate, reference, extras): {err}.",
                          expected=SIGNATURE, fix="give the function those three parameters") from err  # fmt: skip
    return UserMetric(spec, function)


def metric_identity(spec: str) -> str:
    """What keys the journal: the metric's name, or for a user metric its source's content too."""
    if spec in CALLABLES:
        try:
            source = inspect.getsource(CALLABLES[spec])
        except (OSError, TypeError):  # defined where no source is kept (a REPL): the name alone
            source = ""
        return hashlib.sha256(f"{spec}\n{source}".encode()).hexdigest()
    return source_identity(spec) if is_user_metric(spec) else spec
