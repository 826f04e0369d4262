"""Full-data evaluation: the quantities the paper's theorem is about.

Over the whole training set, with per-example gradients in chunks:

* ``H_norm``         ||H(theta)|| = ||mean_i grad l_i / c_i||, the mean field of eq. (22); c_i is
                     the run's clipping method applied PER EXAMPLE (the paper's c), whatever the
                     run's training granularity. With no clipping, H is the mean gradient.
* ``mean_grad_norm`` ||mean_i grad l_i||, the unclipped gradient of the training loss.
* ``scaled_loss``    mean_i l_i / c_i (the paper's "average scaled training loss").
* ``train_loss``, ``train_acc``, ``param_norm``; and ``test_loss``, ``test_acc`` from a plain
  forward pass over the test set.

For AGC and value clipping, which have no single factor, c_i is the effective factor
||g_i|| / ||clipped g_i||.

Two implementations, equal up to float rounding (tests/test_evaluation.py): :func:`evaluate`,
one model at a time from per-example gradients (``vmap(grad)``), and
:class:`PopulationEvaluation`, every member of a population at once from ghost norms
(gradclip.ghost), without per-example gradients, for the models and clipping methods ghost norms
cover. The training loop uses the second wherever it can (gradclip.runner).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from gradclip.clipping import Clipper, member_norms, total_norm
from gradclip.ghost import GhostClipping
from gradclip.gradients import LossFn, PerSampleGradients, accuracy_count


@torch.no_grad()
def _forward_metrics(model: nn.Module, x: Tensor, y: Tensor, loss_fn: LossFn, task: str, chunk: int) -> tuple[float, float]:
    loss_sum, correct = torch.zeros((), device=x.device), torch.zeros((), device=x.device)
    for start in range(0, len(x), chunk):
        out = model(x[start : start + chunk])
        loss_sum += loss_fn(out, y[start : start + chunk]).sum()
        correct += accuracy_count(out, y[start : start + chunk], task)
    return loss_sum.item() / len(x), correct.item() / len(x)


def evaluate(
    model: nn.Module,
    per_sample: PerSampleGradients,
    clipper: Clipper,
    data,
    loss_fn: LossFn,
    chunk: int,
) -> dict[str, float]:
    """Full-data metrics at the model's current parameters (see the module docstring)."""
    was_training = model.training
    model.eval()  # BatchNorm then uses its running statistics, which torch.func can handle
    params = [p.detach() for p in model.parameters()]
    clipped_sum = [torch.zeros_like(p) for p in params]
    grad_sum = [torch.zeros_like(p) for p in params]
    scaled_loss_sum = torch.zeros((), device=params[0].device)
    x, y = data.x_train, data.y_train
    for start in range(0, len(x), chunk):
        grads, losses = per_sample(x[start : start + chunk], y[start : start + chunk])
        clipped_mean, stats = clipper.clip_samples(grads, params)
        n = len(losses)
        torch._foreach_add_(clipped_sum, clipped_mean, alpha=n)
        torch._foreach_add_(grad_sum, [g.sum(0) for g in grads])
        scaled_loss_sum += (losses / stats.factor).sum()
    train_loss, train_acc = _forward_metrics(model, x, y, loss_fn, data.task, chunk)
    test_loss, test_acc = _forward_metrics(model, data.x_test, data.y_test, loss_fn, data.task, chunk)
    model.train(was_training)
    metrics = {
        "H_norm": total_norm(clipped_sum).item() / len(x),
        "mean_grad_norm": total_norm(grad_sum).item() / len(x),
        "scaled_loss": scaled_loss_sum.item() / len(x),
        "train_loss": train_loss,
        "test_loss": test_loss,
        "param_norm": total_norm(params).item(),
    }
    if data.task == "classification":
        metrics |= {"train_acc": train_acc, "test_acc": test_acc}
    return metrics


class PopulationEvaluation:
    """The metrics of :func:`evaluate` for every member of a population (gradclip.population) at
    once: per-example clipping with each member's own settings from ghost norms and
    book-keeping, over the training set in chunks of ``chunk`` examples shared by all members.
    Callable (data) -> one metrics dict per member. Raises ValueError where ghost norms do not
    cover the model or the clipping method (gradclip.ghost.ghost_unsupported_reason)."""

    def __init__(self, population, loss_fn: LossFn, chunk: int) -> None:
        self.population, self.loss_fn, self.chunk = population, loss_fn, int(chunk)
        # A population that trains with ghost norms already has them, with the same clipper and
        # hooks; one that trains at batch granularity gets its own (idle outside evaluation).
        training = getattr(population, "sample_clipping", None)
        self.ghost = training if isinstance(training, GhostClipping) else GhostClipping(population, loss_fn,
                                                                                        population.clipper)

    def _shared(self, x: Tensor) -> Tensor:
        """One chunk as every member's input, [M, C, ...] (a view: no copy per member)."""
        return x.unsqueeze(0).expand(self.population.size, *x.shape)

    @torch.no_grad()
    def _forward_metrics(self, x: Tensor, y: Tensor, task: str) -> tuple[Tensor, Tensor]:
        """Mean loss and accuracy per member, [M] each."""
        population = self.population
        loss_sum = torch.zeros(population.size, device=x.device)
        correct = torch.zeros(population.size, device=x.device)
        for start in range(0, len(x), self.chunk):
            xs, ys = self._shared(x[start : start + self.chunk]), self._shared(y[start : start + self.chunk])
            out = population.forward(xs)
            loss_sum += population.losses(out, ys).sum(1)
            if task == "classification":
                correct += (out.argmax(-1) == ys).sum(1)
        return loss_sum / len(x), correct / len(x)

    def __call__(self, data) -> list[dict[str, float]]:
        population = self.population
        model = population.model
        was_training = model.training
        model.eval()  # as evaluate(): the template's modules run every member's forward pass
        try:
            theta = population.theta.detach()
            clipped_sum = [torch.zeros_like(v) for v in population.views]
            grad_sum = [torch.zeros_like(v) for v in population.views]
            scaled_loss_sum = torch.zeros(population.size, device=theta.device)
            x, y = data.x_train, data.y_train
            for start in range(0, len(x), self.chunk):
                xs, ys = self._shared(x[start : start + self.chunk]), self._shared(y[start : start + self.chunk])
                mean, stats, losses, unclipped = self.ghost.with_unclipped(xs, ys)
                torch._foreach_add_(clipped_sum, mean, alpha=xs.shape[1])
                torch._foreach_add_(grad_sum, unclipped)
                scaled_loss_sum += (losses / stats.factor).sum(1)
            train_loss, train_acc = self._forward_metrics(x, y, data.task)
            test_loss, test_acc = self._forward_metrics(data.x_test, data.y_test, data.task)
        finally:
            model.train(was_training)
        columns = {"H_norm": member_norms(clipped_sum) / len(x), "mean_grad_norm": member_norms(grad_sum) / len(x),
                   "scaled_loss": scaled_loss_sum / len(x), "train_loss": train_loss, "test_loss": test_loss,
                   "param_norm": theta.norm(dim=1)}
        if data.task == "classification":
            columns |= {"train_acc": train_acc, "test_acc": test_acc}
        values = {key: column.tolist() for key, column in columns.items()}
        return [{key: values[key][k] for key in columns} for k in range(population.size)]
