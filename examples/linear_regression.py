"""Tasks are lines: meta-learn an initialisation that fits a new line from two points.

Run ``python examples/linear_regression.py``; ``--iterations`` sets the length of meta-training.
"""

import argparse

import torch
from torch import nn

import mamlkit
from mamlkit.tasks import Linear

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--iterations", type=int, default=3000, help="meta-iterations (default 3000)")
parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
args = parser.parse_args()
if args.iterations < 1:
    parser.error(f"--iterations must be >= 1, got {args.iterations}")

torch.manual_seed(args.seed)
model = nn.Sequential(nn.Linear(1, 32), nn.ReLU(), nn.Linear(32, 1))
maml = mamlkit.MAML(model, inner_lr=0.1, inner_steps=1, eval_inner_steps=5, loss="mse")
optimizer = torch.optim.Adam(maml.parameters(), lr=1e-3)
tasks = Linear(shots=2, queries=10, seed=args.seed)

for _ in range(args.iterations):
    optimizer.zero_grad()
    loss, metrics = maml.meta_loss(tasks.sample(32))
    loss.backward()
    optimizer.step()

# An unseen line: y = 1.5 x - 2, seen through two points only.
support_x = torch.tensor([[-1.0], [2.0]])
support_y = 1.5 * support_x - 2
test_x = torch.linspace(-5, 5, 50).unsqueeze(-1)
test_y = 1.5 * test_x - 2
before = nn.functional.mse_loss(maml.predict(maml.meta_params(), test_x), test_y)
adapted = maml.adapt(support_x, support_y)
after = nn.functional.mse_loss(maml.predict(adapted, test_x), test_y)
print(f"MSE on the new line: {before:.3f} before adaptation, {after:.3f} after 5 steps")
