"""One trial of a hyperparameter search: a small MLP on a synthetic data set.

Run as a trial by schedulerd (`schedctl hpo create examples/hpo/search.yaml`):
the parameters come from `schedulerd.hpo.params()` (SCHEDULERD_HPO_PARAMS), each
epoch's validation loss goes to `hpo.report`, which says when the pruner stops
the trial, and the last one is the objective (`hpo.final`).

Run by hand, it takes the parameters from the command line and prints the
reports: `python examples/hpo/train.py --lr 0.01 --width 64 --batch-size 32`.
With `--save model.pt` it saves the trained weights at the end (not when pruned)
for examples/serve/model_server.py to serve (`--weights model.pt`).

The data set is made here (no downloads): points on three interleaved spirals
with noise, a classic that a linear model cannot fit and a wide enough MLP with
a good learning rate can. A few seconds an epoch on one CPU core.
"""

from __future__ import annotations

import argparse
import math

import torch
from torch import nn

from schedulerd import hpo


def spirals(
    n: int, classes: int = 3, noise: float = 0.25, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    per = n // classes
    xs, ys = [], []
    for c in range(classes):
        r = torch.linspace(0.05, 1.0, per)
        theta = c * 2 * math.pi / classes + r * 4.0 + noise * torch.randn(per, generator=g)
        xs.append(torch.stack([r * torch.cos(theta), r * torch.sin(theta)], dim=1))
        ys.append(torch.full((per,), c, dtype=torch.long))
    return torch.cat(xs), torch.cat(ys)


def model(width: int, classes: int = 3) -> nn.Module:
    return nn.Sequential(
        nn.Linear(2, width),
        nn.ReLU(),
        nn.Linear(width, width),
        nn.ReLU(),
        nn.Linear(width, classes),
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--samples", type=int, default=2000)
    p.add_argument(
        "--save",
        metavar="PATH",
        help="save the trained weights here at the end (examples/serve/model_server.py)",
    )
    args = p.parse_args()
    # In a trial the daemon's parameters win over the command line's defaults.
    params = {"lr": args.lr, "width": args.width, "batch_size": args.batch_size, **hpo.params()}
    torch.manual_seed(0)
    torch.set_num_threads(1)

    x, y = spirals(args.samples)
    order = torch.randperm(len(x))
    x, y = x[order], y[order]
    split = len(x) * 4 // 5
    train_x, train_y, val_x, val_y = x[:split], y[:split], x[split:], y[split:]

    net = model(int(params["width"]))
    opt = torch.optim.Adam(net.parameters(), lr=float(params["lr"]))
    loss_fn = nn.CrossEntropyLoss()
    batch = int(params["batch_size"])
    val_loss, accuracy = float("inf"), 0.0
    for epoch in range(args.epochs):
        net.train()
        perm = torch.randperm(split)
        for i in range(0, split, batch):
            idx = perm[i : i + batch]
            opt.zero_grad()
            loss_fn(net(train_x[idx]), train_y[idx]).backward()
            opt.step()
        net.eval()
        with torch.no_grad():
            val_loss = loss_fn(net(val_x), val_y).item()
            accuracy = (net(val_x).argmax(1) == val_y).float().mean().item()
        print(f"epoch {epoch}: val_loss {val_loss:.4f}, accuracy {accuracy:.3f}", flush=True)
        if hpo.report(epoch, val_loss):
            print("pruned: stopping", flush=True)
            return  # the daemon stops the job anyway; leaving now frees the GPU at once
    if args.save:
        save(net, int(params["width"]), args.save, val_loss=val_loss, accuracy=accuracy)
    hpo.final(val_loss)


def save(net: nn.Module, width: int, path: str, **metrics: float) -> None:
    """The weights and what rebuilds the model (`model(width)`), loadable with
    `torch.load(path, weights_only=True)`."""
    torch.save({"width": width, "classes": 3, "state_dict": net.state_dict(), **metrics}, path)
    print(f"saved the weights to {path}", flush=True)


if __name__ == "__main__":
    main()
