"""Where a run starts: the seed's initialisation (``start=init``), or the minimum of the training
loss that descent reaches from it (``start=loss_minimum``).

Eq. (22) of the paper says that clipped SGD converges to a zero of the clipped mean field
H(theta) (plus the weight decay the runner adds), not to a zero of the loss gradient. On a
network the direct test, SGD from a random initialisation, would need tens of thousands of steps
to settle anywhere (measured: 20,000 steps of SGD on a 40-32-10 tanh MLP with weight decay 1e-2
left the training accuracy at 0.24-0.42). Started at theta_L, a minimum of the loss with weight
decay, SGD only has to travel from theta_L to the zero theta_H that eq. (22) predicts near it,
which is the question itself: without clipping a run stays at theta_L; with per-sample clipping,
eq. (22) says it leaves for theta_H.

theta_L is found deterministically from the seed's initialisation: L-BFGS with a strong Wolfe line
search on the whole training set, mean loss + weight_decay / 2 ||theta||^2 (whose gradient is
the runner's unclipped update direction), in float64, on a copy of the model; the model then takes
the result, rounded to its own dtype. Members of a population that share a seed share the
search (their initialisations are the same), and :func:`cached_loss_minimum` keeps each result in
a folder beside the run's (``.loss_minima/`` in the sweep's folder), keyed by everything that
decides it, so that the other populations and worker processes of a sweep, and its relaunches,
read it instead of searching again (without it, every population of a sweep searched its seeds
anew). With weight_decay=0 a network that can fit its data has no finite minimum: the search
then ends at MAX_ITERATIONS, far out.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import logging
from pathlib import Path

import torch
from torch import nn

from gradclip.gradients import LossFn
from gradclip.records import RecordWriteError, write_bytes_atomic

log = logging.getLogger(__name__)

# L-BFGS stops where the gradient's largest component is below this (float64): the runs' own
# noise moves them ~1e-2 from where they start, and analyses refine theta_L in float64 anyway
# (measured on the 40-16-10 MLP: 395 iterations, 0.7 s; 1e-9 took 3,427 iterations, 5.9 s).
GRADIENT_TOLERANCE = 1e-7
MAX_ITERATIONS = 20_000
# Part of every cache key: raise it when the search changes, so that no older result is read.
SEARCH_VERSION = 2
CACHE_FOLDER = ".loss_minima"


def lbfgs(params: list[torch.Tensor], objective, tolerance_grad: float = GRADIENT_TOLERANCE,
          max_iter: int = MAX_ITERATIONS) -> int:
    """Minimise ``objective()`` over ``params`` (leaf tensors) in place by L-BFGS with a strong
    Wolfe line search, until the gradient's largest component is below ``tolerance_grad``;
    return the iterations. The one setting of the search, here and in gradclip.netfield."""
    optimiser = torch.optim.LBFGS(params, lr=1, max_iter=max_iter, tolerance_grad=tolerance_grad,
                                  tolerance_change=0, history_size=50, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimiser.zero_grad()
        value = objective()
        value.backward()
        return value

    optimiser.step(closure)
    return int(optimiser.state[params[0]]["n_iter"])


def descend_to_loss_minimum(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: LossFn,
                            weight_decay: float) -> dict:
    """Move ``model``'s parameters (in place) to the minimum of mean(loss_fn(model(x), y)) +
    weight_decay / 2 ||theta||^2 that L-BFGS reaches from them; return what the search did:
    iterations, the objective and the gradient's norm at the end (float64)."""
    work = copy.deepcopy(model).double()
    params = [p for p in work.parameters() if p.requires_grad]
    x64 = x.double() if x.is_floating_point() else x
    y64 = y.double() if y.is_floating_point() else y

    def objective() -> torch.Tensor:
        value = loss_fn(work(x64), y64).mean()
        if weight_decay:
            value = value + 0.5 * weight_decay * sum(p.pow(2).sum() for p in params)
        return value

    iterations = lbfgs(params, objective)
    for p in params:
        p.grad = None
    value = objective()
    value.backward()
    gradient_norm = torch.sqrt(sum(p.grad.pow(2).sum() for p in params)).item()
    with torch.no_grad():
        for target, source in zip((p for p in model.parameters() if p.requires_grad), params):
            target.copy_(source.to(target.dtype))
    return {"start": "loss_minimum", "lbfgs_iterations": iterations,
            "objective": value.item(), "gradient_norm": gradient_norm}


def _digest(tensors) -> str:
    hasher = hashlib.sha256()
    for tensor in tensors:
        hasher.update(str((tuple(tensor.shape), tensor.dtype)).encode())
        hasher.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return hasher.hexdigest()


def cached_loss_minimum(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: LossFn, weight_decay: float,
                        key: dict, folder: Path, read: bool = True) -> dict:
    """:func:`descend_to_loss_minimum`, or its result for the same ``key`` read from ``folder``.
    The key is what decides the result: ``key`` (the data and model configs, the seed, the weight
    decay) and, added here, the bytes of the training set and of the model's initial parameters
    (so that a change in the data or the initialisation code is never read past), the search's
    version, torch's version and the device type. ``read=False`` (``rerun=true``) searches and
    rewrites. A missing, unreadable or foreign file is searched again and rewritten; a folder that
    cannot be written only costs the next run the search (logged)."""
    trainable = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    key = key | {"search_version": SEARCH_VERSION, "torch": torch.__version__, "device": x.device.type,
                 "data_bytes": _digest((x, y)), "initial_bytes": _digest(p for _, p in trainable)}
    key = json.loads(json.dumps(key, sort_keys=True, default=str))
    path = Path(folder) / f"{hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]}.pt"
    try:
        if not read:
            raise FileNotFoundError(path)
        saved = torch.load(path, map_location=x.device, weights_only=True)
        theta, info = saved["theta"], dict(saved["info"])  # (read whole before anything is copied)
        if saved["key"] == key and list(theta) == [name for name, _ in trainable] and all(
                theta[name].shape == p.shape and theta[name].dtype == p.dtype for name, p in trainable):
            with torch.no_grad():  # (every shape checked first: a half-copied model cannot happen)
                for name, p in trainable:
                    p.copy_(theta[name])
            return info | {"cached": str(path)}
    except FileNotFoundError:
        pass
    except Exception as error:  # noqa: BLE001 - a damaged cache file is searched again
        log.warning("%s cannot be read (%s: %s); searching again", path, type(error).__name__, error)
    info = descend_to_loss_minimum(model, x, y, loss_fn, weight_decay)
    buffer = io.BytesIO()
    torch.save({"key": key, "info": info, "theta": {name: p.detach().cpu() for name, p in trainable}}, buffer)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(path, buffer.getvalue())
    except (OSError, RecordWriteError) as error:
        log.warning("the loss minimum could not be kept in %s (%s); the next run searches again", path, error)
    return info
