"""All sampled devices at once: SGD and evaluation over stacked weights.

Stacked weights hold one model per row of a leading axis: ``{name: (models, ...)}``.
A *plan* lists the SGD steps of all models in lockstep. A step is an index batch
``(active, width)`` into the data and a loss weight per entry (``1 / batch length``,
0 for padding), so each model's loss is the mean over its own batch, and the models
that have no batch at this step (the rows after ``active``) get no update. Device
``k`` does its ``r``-th batch of epoch ``e`` at step ``(e, r)``: it takes exactly
the steps it would take alone (see ``reference.train_each``), from the same shuffles.

Devices are sorted by size, largest first, so those still training form a prefix,
and trained in chunks that fit in cache. The MLP and logistic regression get
hand-written gradients (a few batched matrix products; at this size every tensor
operation costs more than its FLOPs); any other model runs through ``torch.func.vmap``
and autograd.

FedProx's proximal term and SCAFFOLD's correction (see ``reference.sgd``) batch like the
rest: at each step, before the gradient step, every active model's extra term
``mu (w - w_start) + (c - c_i)`` is taken with a few ``torch._foreach`` operations
on the stacked weights (``w_start`` broadcast from the global weights, ``c - c_i``
one row per device), and subtracted times ``lr`` after it. Both kinds of step, the
hand-written one and autograd's, are left as they are.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.func import functional_call, vmap
from torch.nn.functional import cross_entropy, embedding, pad
from torch.nn.utils.rnn import pad_sequence

from .models import MLP, LogReg
from .reference import batch_orders, check_remedies
from .weights import Weights, weights_bytes

# Per step: data indices (active, width); labels and loss weights (active, 1, width).
Plan = list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
Params = list[torch.Tensor]  # stacked weights in state-dict order

# Linear layers with a ReLU between them; their state dicts list weight, bias per layer.
_RELU_NETS = (LogReg, MLP)
# Devices train together in chunks of at most this many bytes of weights: a few
# times the L2 cache. Larger chunks spend their time streaming weights from memory.
_CACHE_BYTES = 4 << 20


def train_devices(
    model: nn.Module,
    weights: Weights,
    x: torch.Tensor,
    y: torch.Tensor,
    device_indices: Sequence[torch.Tensor],
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    generator: torch.Generator,
    mu: float = 0.0,
    corrections: Weights | None = None,
) -> tuple[Weights, torch.Tensor]:
    """Train every device from ``weights`` at once; the same result as the reference
    ``reference.train_each`` (the same batches from the same generator), stacked.

    ``mu`` and ``corrections`` (row ``k`` for device ``k``): see ``reference.sgd``.
    """
    num_devices = len(device_indices)
    if mu != 0 or corrections is not None:
        check_remedies(
            weights,
            mu=mu,
            corrections=corrections,
            stacked=True,
            num_devices=num_devices,
        )
    sizes = torch.tensor([idx.shape[0] for idx in device_indices])
    orders = batch_orders(sizes, epochs=epochs, generator=generator)
    trained = {k: v.new_empty(num_devices, *v.shape) for k, v in weights.items()}
    loss_sums = torch.empty(num_devices)
    # Largest first, so the devices still training form a prefix; chunks of devices
    # whose weights fit in cache train together.
    rank = sizes.argsort(descending=True, stable=True)
    for chunk in rank.split(_CACHE_BYTES // weights_bytes(weights) or 1):
        devices = [device_indices[k] for k in chunk.tolist()]
        plan = _device_plan(devices, sizes[chunk], orders[chunk], y, batch_size)
        stacked = {k: v.expand(chunk.shape[0], *v.shape) for k, v in weights.items()}
        rows = None  # the chunk's corrections, in the chunk's order
        if corrections is not None:
            rows = {k: v[chunk] for k, v in corrections.items()}
        new, losses = sgd_stacked(
            model, stacked, x, plan, lr=lr, mu=mu, corrections=rows
        )
        for k, v in new.items():
            trained[k].index_copy_(0, chunk, v)
        loss_sums.index_copy_(0, chunk, losses.sum(0))
    mean_losses = loss_sums / (epochs * -(-sizes // batch_size))
    return trained, mean_losses


def _device_plan(
    device_indices: Sequence[torch.Tensor],
    sizes: torch.Tensor,
    orders: torch.Tensor,
    y: torch.Tensor,
    batch_size: int,
) -> Plan:
    """Every device's minibatches in lockstep: step ``(e, r)`` is the ``r``-th batch
    of epoch ``e`` of every device that has one.

    Devices come largest first, with their ``sizes`` and ``orders`` (devices,
    epochs, n), their shuffles from :func:`batch_orders`.
    """
    num_devices, epochs, n_max = orders.shape
    per_epoch = -(-int(sizes[0]) // batch_size)  # batches per epoch, at most
    span = per_epoch * batch_size
    col = torch.arange(span).view(per_epoch, batch_size)
    valid = col < sizes[:, None, None]  # (devices, batches, batch)
    counts = valid.sum(-1)
    weight = (valid / counts.clamp(min=1)[..., None]).unsqueeze(2)  # (..., 1, batch)
    # (devices, epochs, batches, batch): data indices; padding points at real rows
    pos = pad(orders[..., :span], (0, max(0, span - n_max)))
    pos = pos.clamp(max=max(int(sizes[0]) - 1, 0)).view(*orders.shape[:2], *col.shape)
    table = pad_sequence(list(device_indices), batch_first=True)  # (devices, size)
    index = table.gather(1, pos.flatten(1)).view_as(pos)
    labels = y[index].unsqueeze(3)
    active = (counts > 0).sum(0).tolist()
    width = counts.amax(0).tolist()  # drop columns that are padding for all
    return [
        (index[:a, e, r, :w], labels[:a, e, r, :, :w], weight[:a, r, :, :w])
        for e in range(epochs)
        for r, (a, w) in enumerate(zip(active, width, strict=True))
    ]


def sgd(
    model: nn.Module,
    weights: Weights,
    x: torch.Tensor,
    y: torch.Tensor,
    batches: Sequence[torch.Tensor],
    *,
    lr: float,
    mu: float = 0.0,
    correction: Weights | None = None,
) -> tuple[Weights, torch.Tensor]:
    """The same as ``reference.sgd`` (one model, one step per index batch), faster."""
    if mu != 0 or correction is not None:
        check_remedies(weights, mu=mu, corrections=correction, stacked=False)
    plan = []
    if batches:
        index = pad_sequence(list(batches), batch_first=True)  # (steps, width)
        lengths = torch.tensor([idx.shape[0] for idx in batches])[:, None]
        weight = (torch.arange(index.shape[1]) < lengths) / lengths.clamp(min=1)
        steps = index[:, None], y[index][:, None, None], weight[:, None, None]
        plan = list(zip(*steps, strict=True))
    stacked = {k: v[None] for k, v in weights.items()}
    rows = None if correction is None else {k: v[None] for k, v in correction.items()}
    trained, losses = sgd_stacked(
        model, stacked, x, plan, lr=lr, mu=mu, corrections=rows
    )
    return {k: v[0] for k, v in trained.items()}, losses[:, 0]


def sgd_stacked(
    model: nn.Module,
    weights: Weights,
    x: torch.Tensor,
    plan: Plan,
    *,
    lr: float,
    mu: float = 0.0,
    corrections: Weights | None = None,
) -> tuple[Weights, torch.Tensor]:
    """Run ``plan`` on stacked ``weights``; returns new weights and the step losses,
    shape (steps, models), 0 where a model had finished. ``mu`` pulls each model
    towards its row of ``weights`` and ``corrections`` (stacked) add to its
    gradient, as in ``reference.sgd``."""
    params = [v.clone() for v in weights.values()]  # updated in place below
    num_models = params[0].shape[0]
    step, views = _sgd_step(model, list(weights))
    work = views(params)
    extra = _remedies(views, weights, mu, corrections)
    losses = []
    for index, labels, weight in plan:
        active = work
        if index.shape[0] < num_models:
            active = [p[: index.shape[0]] for p in work]
        terms = extra(active) if extra else None  # at the weights the step starts from
        losses.append(step(active, embedding(index, x), labels, weight, lr))
        if terms is not None:
            torch._foreach_add_(active, terms, alpha=-lr)
    # (steps, models); the leading row of zeros sets the width if a model had no step.
    losses = pad_sequence([torch.zeros(num_models), *losses], batch_first=True)[1:]
    return dict(zip(weights, params, strict=True)), losses


def _remedies(
    views: Callable[[Params], Params],
    weights: Weights,
    mu: float,
    corrections: Weights | None,
) -> Callable[[Params], Params] | None:
    """``terms(active)``: each active model's ``mu (w - w_start) + correction``, in
    the step's views; None when both are off (then the step is plain SGD)."""
    if mu == 0 and corrections is None:
        return None
    start = views(list(weights.values()))
    fixed = None if corrections is None else views([corrections[k] for k in weights])

    def terms(active: Params) -> Params:
        rows = active[0].shape[0]
        if mu == 0:
            return [c[:rows] for c in fixed]
        out = torch._foreach_sub(active, [s[:rows] for s in start])
        torch._foreach_mul_(out, mu)
        if fixed is not None:
            torch._foreach_add_(out, [c[:rows] for c in fixed])
        return out

    return terms


@torch.no_grad()
def evaluate(
    model: nn.Module, weights: Sequence[Weights], x: torch.Tensor, y: torch.Tensor
) -> list[tuple[float, float]]:
    """``(accuracy, mean cross-entropy loss)`` of each of ``weights`` on ``(x, y)``,
    in one batched forward pass."""
    num_models, n = len(weights), y.shape[0]
    if n == 0:
        return [(float("nan"), float("nan"))] * num_models
    names = list(weights[0])
    params = [torch.stack([w[k] for w in weights]) for k in names]
    logits = _forward(model, names)(params, x.expand(num_models, *x.shape))
    targets = y.expand(num_models, -1)  # (models, n)
    # max(1).indices is argmax(1) (the first maximum), several times faster here.
    correct = (logits.max(1).indices == targets).sum(-1).tolist()
    loss = cross_entropy(logits, targets, reduction="none").mean(-1).tolist()
    return [(c / n, value) for c, value in zip(correct, loss, strict=True)]


def _forward(model: nn.Module, names: list[str]) -> Callable[..., torch.Tensor]:
    """``forward(params, x)``: logits (models, classes, batch) of stacked ``params``
    (in the order of ``names``) on ``x`` (models, batch, features)."""
    if isinstance(model, _RELU_NETS):
        return lambda params, x: _relu_net(_columns(params), x)[-1]
    call = vmap(lambda w, xb: functional_call(model, w, (xb,)))
    return lambda params, x: call(dict(zip(names, params, strict=True)), x).mT


def _sgd_step(model: nn.Module, names: list[str]) -> tuple[Callable, Callable]:
    """``step(views, x, y, weight, lr)``: one SGD step of every model on its batch,
    in place; returns each model's weighted cross-entropy, shape (models,).
    ``views(params)`` gives the views of the stacked weights that ``step`` takes."""
    if isinstance(model, _RELU_NETS):
        return _relu_net_step, _columns
    forward = _forward(model, names)

    def autograd_step(params, x, y, weight, lr):
        leaves = [p.detach().requires_grad_() for p in params]
        nll = cross_entropy(forward(leaves, x), y.squeeze(1), reduction="none")
        loss = (nll * weight.squeeze(1)).sum(-1)
        torch._foreach_add_(params, torch.autograd.grad(loss.sum(), leaves), alpha=-lr)
        return loss.detach()

    return autograd_step, lambda params: params


def _columns(params: Params) -> Params:
    """A ReLU net's stacked weights, with biases (models, out) viewed as columns."""
    return [p.unsqueeze(-1) if p.dim() == 2 else p for p in params]


def _relu_net(params: Params, x: torch.Tensor) -> list[torch.Tensor]:
    """Inputs of every layer, then the logits, as columns (models, features, batch);
    ``params`` as :func:`_columns` gives them."""
    outputs = [x.mT]
    for i in range(0, len(params), 2):  # weight, bias of each layer
        z = torch.baddbmm(params[i + 1], params[i], outputs[-1])
        outputs.append(z.relu_() if i + 2 < len(params) else z)
    return outputs


def _relu_net_step(
    params: Params, x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor, lr: float
) -> torch.Tensor:
    """:func:`_sgd_step` of a ReLU net, with its gradients written out."""
    *inputs, logits = _relu_net(params, x)
    # Over dim 1 (classes, not contiguous) this is several times faster than over a
    # contiguous last dim of size 10.
    log_p = logits.log_softmax(1)  # (models, classes, batch)
    loss = (log_p.gather(1, y) * weight).sum((1, 2)).neg_()
    dz = log_p.exp_().mul_(weight).scatter_add_(1, y, weight.neg())  # d loss / d logits
    for i in reversed(range(len(inputs))):
        w, b, a = params[2 * i], params[2 * i + 1], inputs[i]
        # Back through w before it changes, then through the ReLU: a >= 0, so its
        # sign is the ReLU's derivative (and faster than a comparison).
        below = w.mT.bmm(dz).mul_(a.sign()) if i > 0 else None
        w.baddbmm_(dz, a.mT, alpha=-lr)  # w -= lr * dz a^T
        b.sub_(dz.sum(2, keepdim=True), alpha=lr)
        dz = below
    return loss
