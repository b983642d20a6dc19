"""Hutchinson estimates of per-unit Hessian traces, and the HAWQ-V2-style score built on them.

The loss is measured against the float model itself (no labels needed): KL(p_float ‖ p) for classifiers, ½‖f − f_float‖²
for embedding models, cross-entropy when labels exist.  At the float weights the first two have zero gradient, so
their Hessian is the Gauss-Newton matrix: the quantity that predicts how much a small weight perturbation costs.

* ``tr(H_u)`` per unit: Rademacher probes v, Hessian-vector products by double backprop, ``E[vᵀ H v]`` restricted to
  each unit's block; one HVP per probe serves every unit; stop when every trace's relative change falls below
  ``tol`` or at ``max_probes``.  Seeded by an explicit ``torch.Generator``.
* weight term: ½ · tr(H_u)/n_u · ‖Q(W_u) − W_u‖², with exactly the int8 quantizer ``compile`` writes.
* activation term: ½ · σ²_x · tr(H_x), the expected loss increase from uniform quantization noise of variance
  σ² = step²/12 on the unit's input (step from the calibrated range); tr(H_x) by the Fisher identity
  E‖∂ℓ̃/∂x‖² with targets sampled from the model's own output distribution.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from trtmix.errors import TrtmixError

LOSSES = ("kl", "mse", "ce")


class SensitivityError(TrtmixError):
    """The sensitivity computation cannot proceed (unmappable unit, NaN loss, a batch the model rejects)."""


@dataclass
class TorchProblem:
    """A torch model, the unit parameters under study, calibration batches and the loss against the float model."""

    model: torch.nn.Module
    parameters: dict[str, torch.nn.Parameter]
    batches: list[tuple[torch.Tensor, ...]]
    loss_kind: str = "kl"
    labels: list[torch.Tensor] | None = None
    references: list[torch.Tensor] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.loss_kind not in LOSSES:
            raise SensitivityError(f"Unknown loss {self.loss_kind!r}.", expected=f"one of {', '.join(LOSSES)}")
        if self.loss_kind == "ce" and self.labels is None:
            raise SensitivityError("The cross-entropy loss needs labels.")
        self.model.eval()
        for parameter in self.model.parameters():
            parameter.requires_grad_(False)
        for parameter in self.parameters.values():
            parameter.requires_grad_(True)
        with torch.no_grad():
            self.references = [self._rows(self._forward(i)).detach() for i in range(len(self.batches))]

    @property
    def device(self) -> torch.device:
        """Where the model lives: CUDA when the caller put it there, else the CPU."""
        return next(self.model.parameters()).device

    def _forward(self, index: int) -> torch.Tensor:
        try:
            output = self.model(*self.batches[index])
        except Exception as err:  # noqa: BLE001 - the user's model can raise anything
            raise SensitivityError(
                f"The model cannot take calibration batch {index}: {type(err).__name__}: {err}"
            ) from err
        leaves = [t for t in torch.utils._pytree.tree_flatten(output)[0] if isinstance(t, torch.Tensor)]
        return leaves[0]

    @staticmethod
    def _rows(output: torch.Tensor) -> torch.Tensor:
        return output.reshape(-1, output.shape[-1]) if output.ndim > 1 else output.reshape(-1, 1)

    def loss(self, index: int) -> torch.Tensor:
        """The mean per-row loss of batch ``index`` against the float model (or the labels)."""
        rows, reference = self._rows(self._forward(index)), self.references[index]
        if self.loss_kind == "kl":
            log_p = torch.log_softmax(rows, dim=-1)
            p0 = torch.softmax(reference, dim=-1)
            value = (p0 * (torch.log(p0 + 1e-30) - log_p)).sum(dim=-1).mean()
        elif self.loss_kind == "mse":
            value = 0.5 * ((rows - reference) ** 2).sum(dim=-1).mean()
        else:
            value = torch.nn.functional.cross_entropy(rows, self.labels[index].reshape(-1))  # type: ignore[index]
        if not torch.isfinite(value):
            raise SensitivityError(f"The loss is {value.item()} on calibration batch {index}.", fix="check the data")
        return value

    def sampled_target_loss(self, index: int, generator: torch.Generator) -> torch.Tensor:
        """A surrogate whose squared input gradients estimate tr(H_x) (Fisher identity): sampled targets."""
        rows = self._rows(self._forward(index))
        if self.loss_kind == "mse":
            noise = torch.randn(rows.shape, generator=generator, device="cpu").to(rows.device)
            return (rows * noise).sum(dim=-1).mean()
        probabilities = torch.softmax(rows.detach(), dim=-1).cpu()
        targets = torch.multinomial(probabilities, 1, generator=generator).reshape(-1).to(rows.device)
        return torch.nn.functional.cross_entropy(rows, targets)

    def hvp(self, vectors: dict[str, torch.Tensor], indices: list[int]) -> dict[str, torch.Tensor]:
        """(H v) per unit, averaged over the batches ``indices``; units absent from ``vectors`` count as zero."""
        names = list(self.parameters)
        total = {name: torch.zeros_like(self.parameters[name]) for name in names}
        for index in indices:
            params = [self.parameters[n] for n in names]
            grads = torch.autograd.grad(self.loss(index), params, create_graph=True)
            dot = sum((g * vectors[n]).sum() for g, n in zip(grads, names, strict=True) if n in vectors)
            if not isinstance(dot, torch.Tensor) or not dot.requires_grad:
                continue
            for name, value in zip(names, torch.autograd.grad(dot, params, allow_unused=True), strict=True):
                if value is not None:
                    total[name] += value.detach() / len(indices)
        return total


@dataclass(frozen=True)
class TraceEstimate:
    """Hutchinson estimate of tr(H_u): the mean over probes, its standard error, and the probe count."""

    mean: float
    stderr: float
    probes: int


def hutchinson_traces(
    problem: TorchProblem,
    generator: torch.Generator,
    max_probes: int = 30,
    tol: float = 0.05,
    min_probes: int = 3,
    progress: Callable[[int], None] | None = None,
) -> dict[str, TraceEstimate]:
    """tr(H_u) for every unit of ``problem``: one HVP per Rademacher probe, batches cycled across probes."""
    samples: dict[str, list[float]] = {name: [] for name in problem.parameters}
    for probe in range(max_probes):
        vectors = {
            name: (torch.randint(0, 2, p.shape, generator=generator) * 2.0 - 1.0).to(p.device, p.dtype)
            for name, p in problem.parameters.items()
        }
        products = problem.hvp(vectors, [probe % len(problem.batches)])
        previous = {name: float(np.mean(values)) if values else None for name, values in samples.items()}
        for name in samples:
            samples[name].append(float((vectors[name] * products[name]).sum()))
        if progress:
            progress(probe + 1)
        if probe + 1 >= min_probes and _converged(samples, previous, tol):
            break
    return {
        name: TraceEstimate(
            float(np.mean(v)), float(np.std(v, ddof=1) / math.sqrt(len(v))) if len(v) > 1 else 0.0, len(v)
        )
        for name, v in samples.items()
    }


def _converged(samples: dict[str, list[float]], previous: dict[str, float | None], tol: float) -> bool:
    for name, values in samples.items():
        before, now = previous[name], float(np.mean(values))
        if before is None or abs(now - before) > tol * max(abs(now), 1e-30):
            return False
    return True


def activation_traces(
    problem: TorchProblem, modules: dict[str, torch.nn.Module], generator: torch.Generator, samples: int = 2
) -> dict[str, float]:
    """tr(H_x) of each unit's input x, per row of output, by E‖∂ℓ̃/∂x‖² × rows (see the module docstring)."""
    captured: dict[str, torch.Tensor] = {}

    def hook_for(name: str) -> Callable[..., None]:
        def hook(_module: torch.nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
            if inputs[0].requires_grad:
                inputs[0].retain_grad()
                captured[name] = inputs[0]

        return hook

    handles = [module.register_forward_pre_hook(hook_for(name)) for name, module in modules.items()]
    totals = dict.fromkeys(modules, 0.0)
    original = problem.batches
    problem.batches = [  # graph inputs need gradients too: the first unit reads one
        tuple(t.detach().clone().requires_grad_(True) if t.is_floating_point() else t for t in batch)
        for batch in original
    ]
    try:
        for index in range(len(problem.batches)):
            for _ in range(samples):
                captured.clear()
                surrogate = problem.sampled_target_loss(index, generator)
                rows = problem.references[index].shape[0]
                leaves = [captured[n] for n in modules if n in captured and captured[n].requires_grad]
                grads = torch.autograd.grad(surrogate, leaves, allow_unused=True) if leaves else []
                by_leaf = dict(zip([id(t) for t in leaves], grads, strict=True))
                for name in modules:
                    grad = by_leaf.get(id(captured.get(name)))
                    if grad is not None:
                        totals[name] += rows * float((grad**2).sum()) / (len(problem.batches) * samples)
    finally:
        problem.batches = original
        for handle in handles:
            handle.remove()
    return totals


def weight_term(trace: TraceEstimate, delta: torch.Tensor) -> float:
    """½ · tr(H)/n · ‖ΔW‖²: the expected loss increase of a weight perturbation with the given energy."""
    return 0.5 * trace.mean / delta.numel() * float((delta.double() ** 2).sum())


def activation_term(trace_x: float, amax: float, levels: int = 127) -> float:
    """½ · σ² · tr(H_x) with σ² = step²/12 and step = amax/levels (symmetric int8)."""
    step = amax / levels
    return 0.5 * step**2 / 12.0 * trace_x
