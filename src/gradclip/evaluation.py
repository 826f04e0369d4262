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
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from gradclip.clipping import Clipper, total_norm
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
