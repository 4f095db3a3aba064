"""Load a model from ``path/to/file.py:factory`` or ``package.module:factory``."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import inspect as pyinspect
import os
import sys
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
from torch import nn

from initaudit.core.errors import LoadError, describe, user_frame

RETURN_FORMS = (
    "an nn.Module, a tuple (model, example_input), "
    'or a dict {"model": ..., "input": ..., "loss": ...}'
)


@dataclass
class Target:
    """What a factory built: the model, and what it said about its input and loss."""

    spec: str
    model: nn.Module
    example_input: Any = None
    loss: Optional[Callable[[Any, Any], torch.Tensor]] = None
    classes: Optional[int] = None  # the output is logits over this many classes
    labels: Optional[torch.Tensor] = None  # the example batch's class labels (an integer tensor)
    optimizer: Any = None  # an optimizer over the model's parameters, or a function that builds one
    source: Optional[str] = None  # file defining the factory
    line: Optional[int] = None  # the factory's first line there


def parse_factory_args(pairs: List[str]) -> Dict[str, Any]:
    """``["depth=30", "act='relu'"]`` -> ``{"depth": 30, "act": "relu"}``.

    Values are Python literals (``ast.literal_eval``); a value that is not a literal is
    taken as a plain string, so ``act=relu`` works as well as ``act='relu'``.
    """
    kwargs: Dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise LoadError(f"--factory-arg {pair!r} is not of the form key=value")
        try:
            kwargs[key] = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            kwargs[key] = raw
    return kwargs


def split_target(spec: str) -> Tuple[str, str]:
    """``"a/b.py:build"`` -> ``("a/b.py", "build")``; the factory name is required."""
    location, sep, factory = spec.rpartition(":")
    if not sep or not location or not factory:
        raise LoadError(
            f"target {spec!r} must be path/to/file.py:factory or package.module:factory"
        )
    if not factory.isidentifier():
        raise LoadError(f"target {spec!r}: {factory!r} is not a Python name")
    return location, factory


def _is_path(location: str) -> bool:
    return location.endswith(".py") or os.sep in location or "/" in location


def import_location(location: str) -> Any:
    """Import a file (by path) or a module (by dotted name) and return the module."""
    if _is_path(location):
        return _import_file(location)
    try:
        return importlib.import_module(location)
    except ModuleNotFoundError as exc:
        if exc.name and location.startswith(exc.name):
            raise LoadError(f"no module named {exc.name!r}", f"target {location}") from exc
        raise LoadError(f"importing {location} failed: {describe(exc)}", user_frame(exc)) from exc
    except SyntaxError as exc:
        raise LoadError(f"syntax error: {exc.msg}", f"{exc.filename}:{exc.lineno}") from exc
    except Exception as exc:
        raise LoadError(f"importing {location} raised {describe(exc)}", user_frame(exc)) from exc


def _import_file(path: str) -> Any:
    if not os.path.exists(path):
        raise LoadError(f"file not found: {path}")
    if os.path.isdir(path):
        raise LoadError(f"{path} is a directory, expected a .py file")
    full = os.path.abspath(path)
    module_name = "_initaudit_target_" + "".join(c if c.isalnum() else "_" for c in full)
    spec = importlib.util.spec_from_file_location(module_name, full)
    if spec is None or spec.loader is None:
        raise LoadError(f"cannot import {path}: not a Python file")
    module = importlib.util.module_from_spec(spec)
    # the file's own directory first, so that its sibling imports resolve as in `python file.py`
    sys.path.insert(0, os.path.dirname(full))
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except SyntaxError as exc:
        sys.modules.pop(module_name, None)
        raise LoadError(f"syntax error: {exc.msg}", f"{path}:{exc.lineno}") from exc
    except Exception as exc:
        sys.modules.pop(module_name, None)
        raise LoadError(f"importing {path} raised {describe(exc)}", user_frame(exc)) from exc
    finally:
        try:
            sys.path.remove(os.path.dirname(full))
        except ValueError:
            pass
    return module


def load_target(spec: str, factory_args: Optional[Dict[str, Any]] = None) -> Target:
    """Import the target, call its factory and normalize what it returned."""
    location, factory_name = split_target(spec)
    module = import_location(location)
    factory = getattr(module, factory_name, None)
    if factory is None:
        available = sorted(
            n
            for n, v in vars(module).items()
            if callable(v) and not n.startswith("_") and getattr(v, "__module__", None) == module.__name__
        )
        hint = f"; callables defined there: {', '.join(available)}" if available else ""
        raise LoadError(f"{location} has no attribute {factory_name!r}{hint}")
    if not callable(factory):
        raise LoadError(f"{location}:{factory_name} is a {type(factory).__name__}, not a callable")
    kwargs = factory_args or {}
    try:
        built = factory(**kwargs)
    except TypeError as exc:
        if _bad_call(factory, kwargs):
            raise LoadError(f"cannot call {factory_name}() with {sorted(kwargs) or 'no arguments'}: {exc}") from exc
        raise LoadError(f"{factory_name}() raised {describe(exc)}", user_frame(exc)) from exc
    except Exception as exc:
        raise LoadError(f"{factory_name}() raised {describe(exc)}", user_frame(exc)) from exc
    target = normalize(built, spec, factory_name)
    target.source = getattr(module, "__file__", None)
    code = getattr(factory, "__code__", None)
    target.line = code.co_firstlineno if code is not None else None
    if target.example_input is None:
        supplier = getattr(module, "example_input", None)
        if callable(supplier):
            try:
                target.example_input = supplier()
            except Exception as exc:
                raise LoadError(f"example_input() raised {describe(exc)}", user_frame(exc)) from exc
    return target


def _bad_call(factory: Callable[..., Any], kwargs: Dict[str, Any]) -> bool:
    """Whether ``factory(**kwargs)`` fails to bind, as opposed to raising inside."""
    try:
        pyinspect.signature(factory).bind(**kwargs)
    except TypeError:
        return True
    except ValueError:  # no signature available
        return False
    return False


def normalize(built: Any, spec: str, factory_name: str = "factory") -> Target:
    """Accept the three return forms of a factory."""
    if isinstance(built, nn.Module):
        return Target(spec, built)
    if isinstance(built, tuple) and len(built) == 2 and isinstance(built[0], nn.Module):
        return Target(spec, built[0], example_input=built[1])
    if isinstance(built, dict):
        unknown = sorted(set(built) - {"model", "input", "loss", "classes", "labels", "optimizer"})
        if unknown:
            raise LoadError(
                f"{factory_name}() returned a dict with unknown key(s) {unknown}; "
                "expected 'model', 'input' and optionally 'loss', 'classes', 'labels' and 'optimizer'"
            )
        model = built.get("model")
        if not isinstance(model, nn.Module):
            raise LoadError(
                f"{factory_name}() returned a dict whose 'model' is "
                f"{type(model).__name__}, expected an nn.Module"
            )
        loss = built.get("loss")
        if loss is not None and not callable(loss):
            raise LoadError(f"{factory_name}() returned a dict whose 'loss' is not callable")
        classes = built.get("classes")
        if classes is not None and (isinstance(classes, bool) or not isinstance(classes, int) or classes < 2):
            raise LoadError(f"{factory_name}() returned a dict whose 'classes' is {classes!r}, expected an int >= 2")
        labels = built.get("labels")
        if labels is not None and not (isinstance(labels, torch.Tensor) and not labels.is_floating_point()
                                       and not labels.is_complex() and labels.dtype != torch.bool):
            raise LoadError(f"{factory_name}() returned a dict whose 'labels' is "
                            f"{getattr(labels, 'dtype', type(labels).__name__)}, expected an integer tensor of class labels")
        optimizer = built.get("optimizer")
        if optimizer is not None and not (isinstance(optimizer, torch.optim.Optimizer) or callable(optimizer)):
            raise LoadError(f"{factory_name}() returned a dict whose 'optimizer' is {type(optimizer).__name__}, "
                            "expected a torch.optim.Optimizer or a function of the parameters")
        return Target(spec, model, example_input=built.get("input"), loss=loss, classes=classes, labels=labels,
                      optimizer=optimizer)
    raise LoadError(f"{factory_name}() returned {type(built).__name__}, expected {RETURN_FORMS}")


def load_checkpoint(model: nn.Module, path: str) -> None:
    """Load a state dict into ``model``, never running code from the file.

    A ``.safetensors`` file is read with the optional ``safetensors`` package (a flat
    mapping of names to tensors, memory-mapped, no code at all); anything else with
    ``torch.load(..., weights_only=True)``, which refuses pickles that would call anything
    but the tensor constructors, so a malicious checkpoint is an error, not an exploit.
    """
    from collections.abc import Mapping

    if not os.path.exists(path):
        raise LoadError(f"checkpoint not found: {path}")
    if path.lower().endswith(".safetensors"):
        state = _read_safetensors(path)
        state = _fill_tied(model, state)
    else:
        state = _read_torch_checkpoint(path)
    if isinstance(state, Mapping) and "state_dict" in state and isinstance(state["state_dict"], Mapping):
        state = state["state_dict"]  # the common {"state_dict": ..., "epoch": ...} wrapper
    if not isinstance(state, Mapping) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise LoadError(f"{path} is not a state dict (a mapping of names to tensors), it holds {type(state).__name__}")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())
        raise LoadError(f"{path} does not fit the model: {detail[:300]}") from exc


def _read_torch_checkpoint(path: str) -> Any:
    import pickle

    try:
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:
            if "mmap" not in str(exc):
                raise
            return torch.load(path, map_location="cpu", weights_only=True)  # an old, non-zip file
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "unsafe content"
        raise LoadError(f"refused to load {path}: it is not a plain state dict of tensors ({first})") from exc
    except Exception as exc:
        raise LoadError(f"cannot read checkpoint {path}: {describe(exc)}") from exc


def _read_safetensors(path: str) -> Dict[str, torch.Tensor]:
    try:
        from safetensors.torch import load_file
    except ImportError as exc:
        raise LoadError(
            f"reading {path} needs the safetensors package: pip install safetensors "
            "(or pip install 'initaudit[safetensors]')"
        ) from exc
    try:
        return load_file(path, device="cpu")
    except Exception as exc:
        raise LoadError(f"cannot read safetensors checkpoint {path}: {describe(exc)}") from exc


def _fill_tied(model: nn.Module, state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Give a tied parameter that the file left out its partner's tensor.

    safetensors stores no shared tensors, so ``safetensors.torch.save_model`` (and
    libraries saving tied embeddings) keep one name of each tied group; the model still
    has all of them, and ``load_state_dict(strict=True)`` would call the others missing.
    """
    groups: Dict[Tuple[int, int, Tuple[int, ...], Tuple[int, ...]], List[str]] = {}
    for name, t in model.state_dict().items():
        if t.numel() and t.device.type != "meta":
            key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()))
            groups.setdefault(key, []).append(name)
    filled = dict(state)
    for names in groups.values():
        present = [n for n in names if n in state]
        if present:
            for n in names:
                filled.setdefault(n, state[present[0]])
    return filled
