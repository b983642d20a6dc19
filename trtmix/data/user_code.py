"""Loading the user's Python: model factories (``MODULE:FUNCTION``) and data recipes (``recipe.py[:func]``).

Both follow Polygraphy's data-loader-script idea: a file path or an importable module, plus a function name.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
import traceback
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

from trtmix.errors import ModelLoadError, TrtmixError


def split_spec(spec: str, default_function: str | None) -> tuple[str, str]:
    """Split ``module_or_path[:function]``; a Windows-style drive colon is not taken as the separator."""
    module_part, sep, function = spec.rpartition(":")
    if not sep or not module_part or "/" in function or "\\" in function:
        module_part, function = spec, ""
    if not function:
        if default_function is None:
            raise ModelLoadError(
                f"{spec!r} names no function.",
                expected="MODULE:FUNCTION, e.g. trtmix.models.tiny:convnet or ./my_model.py:build",
                fix="append ':<function name>'",
            )
        function = default_function
    return module_part, function


def import_module_or_file(name: str) -> ModuleType:
    """Import a dotted module name, or execute a ``.py`` file as a fresh module."""
    path = Path(name)
    if name.endswith(".py") or path.is_file():
        if not path.is_file():
            raise ModelLoadError(f"Python file {name} does not exist.", fix="check the path")
        spec = importlib.util.spec_from_file_location(f"trtmix_user_{path.stem}", path)
        if spec is None or spec.loader is None:
            raise ModelLoadError(f"Cannot load {name} as a Python file.")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        _run_user_code(lambda: spec.loader.exec_module(module), f"running {name}")  # type: ignore[union-attr]
        return module
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as err:
        raise ModelLoadError(
            f"Cannot import module {name!r}: {err}.",
            expected="an importable module name or a path to a .py file",
            fix="check the spelling, install the package, or pass a file path",
        ) from err
    except TrtmixError:
        raise
    except Exception as err:
        raise ModelLoadError(user_error(err, f"importing {name!r}"), fix=USER_FIX) from err


def load_function(spec: str, default_function: str | None = None) -> Callable[..., Any]:
    """The callable ``spec`` names."""
    module_name, function_name = split_spec(spec, default_function)
    module = import_module_or_file(module_name)
    function = getattr(module, function_name, None)
    if not callable(function):
        available = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_"))[:10]
        raise ModelLoadError(
            f"{module_name} has no function {function_name!r}.",
            expected=f"one of: {', '.join(available) or '(no public functions)'}",
            fix="correct the name after the colon",
        )
    return function


def load_model_factory(spec: str) -> tuple[Any, tuple[Any, ...]]:
    """Call a ``MODULE:FUNCTION`` factory and check it returns ``(torch.nn.Module, sample_inputs)``."""
    import torch

    factory = load_function(spec)
    result = _run_user_code(factory, f"calling {spec}")
    if not (isinstance(result, tuple) and len(result) == 2):
        raise ModelLoadError(
            f"{spec} returned {type(result).__name__}.",
            expected="a tuple (model, sample_inputs)",
            fix="return the model and a tuple of example input tensors",
        )
    model, samples = result
    if not isinstance(model, torch.nn.Module):
        raise ModelLoadError(f"{spec} returned a {type(model).__name__} as the model.", expected="a torch.nn.Module")
    if isinstance(samples, torch.Tensor):
        samples = (samples,)
    if not (isinstance(samples, (tuple, list)) and samples and all(isinstance(s, torch.Tensor) for s in samples)):
        raise ModelLoadError(
            f"{spec} returned sample inputs of type {type(samples).__name__}.",
            expected="a tensor or a non-empty tuple of tensors, one per forward() argument",
        )
    return model, tuple(samples)


def source_identity(spec: str) -> str:
    """A hash of what ``spec`` names, so a cache or journal notices when the user's code or data changes.

    The spec itself, plus: the bytes of a file; the names, sizes and times of a folder's files; the source of the
    module a ``module:function`` names (found without importing it).
    """
    digest = hashlib.sha256(spec.encode())
    path = Path(spec)
    if not path.exists() and ":" in spec:
        path = Path(spec.rpartition(":")[0])
    if path.is_file():
        digest.update(path.read_bytes())
    elif path.is_dir():
        for item in sorted(p for p in path.rglob("*") if p.is_file()):
            digest.update(f"{item.relative_to(path)}:{item.stat().st_size}:{item.stat().st_mtime_ns}".encode())
    else:
        origin = _module_origin(spec.partition(":")[0])
        if origin is not None:
            digest.update(origin.read_bytes())
    return digest.hexdigest()


def _module_origin(name: str) -> Path | None:
    """The source file of module ``name``, or None when it cannot be found (the spec alone then identifies it)."""
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    origin = Path(spec.origin) if spec is not None and spec.origin else None
    return origin if origin is not None and origin.is_file() else None


def _run_user_code(action: Callable[[], Any], what: str) -> Any:
    try:
        return action()
    except TrtmixError:
        raise
    except Exception as err:
        raise ModelLoadError(user_error(err, what), fix=USER_FIX) from err


USER_FIX = "fix the error in your code (--verbose shows its traceback)"
LIBRARY_PARTS = ("site-packages", "dist-packages", f"{Path(sys.base_prefix) / 'lib'}")


def user_error(err: BaseException, what: str) -> str:
    """``<what> raised RuntimeError: boom (recipe.py, line 3)``: the user's exception at its deepest line in their code.

    The line is the last traceback frame outside trtmix, the standard library and installed packages (for a
    ``SyntaxError``, the line it reports).
    """
    where = ""
    if isinstance(err, SyntaxError) and err.filename:
        where = f" ({Path(err.filename).name}, line {err.lineno})"
    else:
        frames = [frame for frame in traceback.extract_tb(err.__traceback__) if _is_user_file(frame.filename)]
        if frames:
            where = f" ({Path(frames[-1].filename).name}, line {frames[-1].lineno})"
    return f"{what} raised {type(err).__name__}: {err}{where}"


def _is_user_file(filename: str) -> bool:
    """False for trtmix's own files, the standard library and installed packages."""
    path = str(Path(filename).resolve()) if not filename.startswith("<") else filename
    package = str(Path(__file__).resolve().parents[1])
    return not (path.startswith(package) or filename.startswith("<") or any(p in path for p in LIBRARY_PARTS))


def guarded(items: Iterable[Any], what: str, error: type[TrtmixError]) -> Iterator[Any]:
    """Iterate the user's generator; an exception inside it becomes ``error`` naming their file and line."""
    try:
        iterator = iter(items)
    except TrtmixError:
        raise
    except Exception as err:
        raise error(user_error(err, what), fix=USER_FIX) from err
    while True:
        try:
            item = next(iterator)
        except StopIteration:
            return
        except TrtmixError:
            raise
        except Exception as err:
            raise error(user_error(err, what), fix=USER_FIX) from err
        yield item
