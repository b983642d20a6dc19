"""Property-based fuzzing of what users type and feed: any input gives a valid result or a ``TrtmixError``.

The plan parser (JSON of any shape), the budget parsers (any string), the ``--dim`` / ``--trt-shapes`` /
``--data-arg`` parsers, and the feed check (dicts of arbitrary arrays) never raise anything else: no ``KeyError``,
``TypeError`` or ``ValueError`` escapes to the user as a traceback.
"""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from trtmix.data.feeds import parse_dims, parse_profiles
from trtmix.data.recipes import check_feed, parse_data_args
from trtmix.errors import TrtmixError
from trtmix.quant.plan import Precision, PrecisionPlan
from trtmix.search.bisection import Budget

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=12),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
PLANS = JSON | st.fixed_dictionaries(
    {"default": st.sampled_from(["fp16", "fp32", "int8", "int4", 3, None]),
     "units": st.dictionaries(st.text(max_size=6), JSON | st.sampled_from(["int8", "fp16", "fp32"]), max_size=4)},
)  # fmt: skip
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(PLANS)
def test_plan_parser(data: object) -> None:
    try:
        plan = PrecisionPlan.from_dict(data)
    except TrtmixError:
        return
    assert isinstance(plan.default, Precision) and all(isinstance(p, Precision) for p in plan.units.values())
    assert PrecisionPlan.from_dict(plan.to_dict()) == plan


@FUZZ
@given(st.text(max_size=16) | st.from_regex(r"\A-?[0-9.]{0,6}%?\Z"))
def test_max_drop_parser(text: str) -> None:
    try:
        budget = Budget.parse(max_drop=text)
    except TrtmixError:
        return
    assert 0 < budget.lower <= 1 and budget.upper is None


@FUZZ
@given(st.text(max_size=16) | st.from_regex(r"\A[0-9.]{0,6}:[0-9.]{0,6}\Z"))
def test_accuracy_range_parser(text: str) -> None:
    try:
        budget = Budget.parse(accuracy_range=text)
    except TrtmixError:
        return
    assert budget.upper is not None and 0 < budget.lower <= budget.upper and budget.lower <= 1


@FUZZ
@given(st.lists(st.text(max_size=12) | st.from_regex(r"\A\w{1,4}=-?\d{0,3}\Z"), max_size=4))
def test_dim_parser(items: list[str]) -> None:
    try:
        dims = parse_dims(items)
    except TrtmixError:
        return
    assert all(isinstance(v, int) and v >= 1 for v in dims.values())


@FUZZ
@given(st.lists(st.text(max_size=24) | st.from_regex(r"\A\w{1,3}(:\d{1,2}(x\d{1,2}){0,2}){0,4}\Z"), max_size=3))
def test_trt_shapes_parser(items: list[str]) -> None:
    try:
        profiles = parse_profiles(items)
    except TrtmixError:
        return
    assert all(len(shapes) == 3 for shapes in profiles.values())


@FUZZ
@given(st.lists(st.text(max_size=12), max_size=4))
def test_data_arg_parser(items: list[str]) -> None:
    try:
        args = parse_data_args(items)
    except TrtmixError:
        return
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in args.items())


SPECS = {"input": (np.float32, (2, "batch", 4)), "ids": (np.int64, ("seq",))}
ARRAYS = hnp.arrays(
    dtype=st.sampled_from([np.float32, np.float64, np.int64, np.int32, np.bool_, np.float16]),
    shape=hnp.array_shapes(min_dims=0, max_dims=4, max_side=4),
    elements=None,
)
FEEDS = st.dictionaries(st.sampled_from(["input", "ids", "other", ""]), ARRAYS, max_size=3) | JSON


@FUZZ
@given(FEEDS)
def test_feed_check(feed: object) -> None:
    try:
        checked = check_feed(feed, SPECS, batch_index=0)  # type: ignore[arg-type]
    except TrtmixError:
        return
    assert set(checked) == set(SPECS)
    assert checked["input"].dtype == np.float32 and checked["input"].shape[0] == 2 and checked["input"].shape[2] == 4
    assert np.isfinite(checked["input"]).all() and checked["ids"].dtype == np.int64
