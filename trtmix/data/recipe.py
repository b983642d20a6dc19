"""A job's data, resolved once: the spec and its arguments, and every way a job reads it.

The spec is a recipe (``recipe.py[:function]`` or ``module:function``), an image folder, an ``.npz`` file or splits
registered in memory (``register_splits``).  A recipe module may also define ``load_labels(split)`` (the labels of
``load_data(split)``'s rows, in order) and ``load_extras(split)`` (what a user metric reads beside the outputs).
Every stage reads the data through a ``Recipe`` instead of re-parsing the spec string.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from trtmix.data.recipes import Feed, checked_batches, is_in_memory, load_batches
from trtmix.data.user_code import USER_FIX, import_module_or_file, split_spec, user_error
from trtmix.errors import TrtmixError


@dataclass(frozen=True)
class Recipe:
    """``spec`` with its keyword arguments (``--data-arg``): batches, labels and extras of each split."""

    spec: str
    args: tuple[tuple[str, str], ...] = ()

    @classmethod
    def of(cls, spec: str, args: Mapping[str, str] | Iterable[tuple[str, str]] = ()) -> Recipe:
        """The recipe of ``spec`` with ``args`` (a mapping or pairs), in a stable order."""
        pairs = args.items() if isinstance(args, Mapping) else args
        return cls(spec, tuple(sorted(pairs)))

    def raw_batches(self, split: str) -> Iterable[Feed]:
        """The split's batches as the data yields them, unchecked (calibration checks them as it reads)."""
        return load_batches(self.spec, split, **dict(self.args))

    def batches(self, model: onnx.ModelProto, split: str, limit: int) -> list[Feed]:
        """At most ``limit`` batches of ``split``, each checked against ``model``'s inputs."""
        return list(checked_batches(self.raw_batches(split), model, limit=limit, split=split))

    def labels(self, split: str) -> np.ndarray | None:
        """``load_labels(split)`` of the recipe as an array; None when the data has no such function."""
        labels = self.call("load_labels", split)
        return None if labels is None else np.asarray(labels)

    def extras(self, split: str) -> dict[str, Any]:
        """What a user metric reads beside the outputs: ``labels`` (if any) and ``load_extras(split)``."""
        extras: dict[str, Any] = {}
        labels = self.labels(split)
        if labels is not None:
            extras["labels"] = labels
        value = self.call("load_extras", split)
        if value is not None and not isinstance(value, dict):
            raise TrtmixError(f"load_extras({split!r}) of {self.spec} returned {type(value).__name__}.",
                              expected="a dict of name → value for the metric")  # fmt: skip
        return {**extras, **(value or {})}

    @property
    def has_module(self) -> bool:
        """Whether the data is a recipe module (an ``.npz``, an image folder or data in memory has none)."""
        return not (self.spec.endswith(".npz") or Path(self.spec).is_dir() or is_in_memory(self.spec))

    def call(self, function_name: str, split: str) -> Any:
        """The recipe module's ``function_name(split=split)``; None when there is no module or no such function.

        An exception in the user's function is one error naming their file and line.
        """
        if not self.has_module:
            return None
        module_name, _ = split_spec(self.spec, default_function="load_data")
        function = getattr(import_module_or_file(module_name), function_name, None)
        if function is None:
            return None
        try:
            return function(split=split)
        except TrtmixError:
            raise
        except Exception as err:
            raise TrtmixError(user_error(err, f"{function_name}({split!r}) of {module_name}"), fix=USER_FIX) from err
