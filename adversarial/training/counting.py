"""Counting gradient computations: per-example backward passes through the model.

The cost figure that compares training methods. One *gradient computation* is one
example's backward pass through the whole model, whatever the pass computes (weight
gradients, input gradients or both): a backward pass over a minibatch of ``n`` examples
counts ``n``; a backward pass through two forward passes of ``n`` examples each (TRADES'
clean and adversarial logits) counts ``2n``. Forward passes without a backward pass (no-grad
evaluation, the clean probabilities of TRADES) count nothing.

The count is taken by autograd itself, not by each method's bookkeeping: a forward hook on
the model attaches a gradient hook to every output that autograd records, and that hook
fires exactly when a backward pass reaches the output. So natural training costs one
computation per example per epoch, PGD-K training ``K + 1``, and Free-AT with ``m``
replays ``m`` per loop epoch (``ceil(epochs / m)`` loop epochs: about natural's total).
"""

from __future__ import annotations

from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle


class GradientCounter:
    """Counts per-example backward passes through ``model`` while installed.

    ``stage`` names the bucket the next passes go to (``"train"`` or ``"validation"``);
    :meth:`take` reads and resets one bucket. :meth:`remove` uninstalls the hook.
    """

    def __init__(self, model: nn.Module) -> None:
        self.stage = "train"
        self._counts: dict[str, int] = {}
        self._handle: RemovableHandle | None = model.register_forward_hook(self._on_forward)

    def _on_forward(self, _module: nn.Module, _inputs: tuple[object, ...], output: object) -> None:
        if isinstance(output, Tensor) and output.requires_grad:
            examples = int(output.shape[0]) if output.dim() else 1
            stage = self.stage

            def on_backward(_grad: Tensor) -> None:
                self._counts[stage] = self._counts.get(stage, 0) + examples

            output.register_hook(on_backward)  # type: ignore[no-untyped-call]

    def take(self, stage: str) -> int:
        """The passes counted in ``stage`` since the last ``take`` of it, resetting it."""
        return self._counts.pop(stage, 0)

    def remove(self) -> None:
        """Uninstall the hook (idempotent)."""
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
