"""Tasks are lines: meta-learn an initialisation that fits a new line from two points."""

import torch
from torch import nn

import mamlkit
from mamlkit.tasks import Linear

torch.manual_seed(0)
model = nn.Sequential(nn.Linear(1, 32), nn.ReLU(), nn.Linear(32, 1))
maml = mamlkit.MAML(model, inner_lr=0.1, inner_steps=1, eval_inner_steps=5, loss="mse")
optimizer = torch.optim.Adam(maml.parameters(), lr=1e-3)
tasks = Linear(shots=2, queries=10, seed=0)

for _ in range(3000):
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
