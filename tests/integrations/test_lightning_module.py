"""MetaLearningModule in one process: it trains, validates by adapting to held-out tasks, and its
Lightning checkpoint restores the learner's parameters; meta_backward's ``backward=`` receives
each chunk's share of the loss and accumulates the gradient of the mean loss."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

pl = pytest.importorskip("lightning.pytorch")

from mamlkit import MAML, Sinusoid  # noqa: E402
from mamlkit.integrations import TaskDataset, collate_tasks  # noqa: E402
from mamlkit.integrations.lightning import MetaLearningModule  # noqa: E402


def _learner() -> MAML:
    torch.manual_seed(0)
    return MAML(nn.Sequential(nn.Linear(1, 16), nn.ReLU(), nn.Linear(16, 1)), inner_lr=0.01,
                eval_inner_steps=3, chunk_size=3)


def test_backward_callable_gets_every_chunk_and_the_same_gradient() -> None:
    batch = Sinusoid(seed=1).sample(8)
    plain, handed = _learner(), _learner()
    losses, _ = plain.meta_loss(batch)
    losses.backward()
    shares = []
    handed.meta_backward(batch, backward=lambda loss: (shares.append(float(loss.detach())), loss.backward()))
    assert len(shares) == 3  # chunks of 3, 3 and 2 tasks
    assert sum(shares) == pytest.approx(float(losses.detach()), rel=1e-6)
    for (name, a), b in zip(plain.named_parameters(), handed.parameters()):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-5, atol=1e-7, msg=name)


def test_fit_validate_and_restore_from_a_lightning_checkpoint(tmp_path) -> None:
    tasks = TaskDataset(Sinusoid(seed=0).fixed_tasks(40, seed=2))
    val = TaskDataset(Sinusoid(seed=0).fixed_tasks(10, seed=3))
    module = MetaLearningModule(_learner(), meta_lr=1e-2)
    before = {n: p.detach().clone() for n, p in module.learner.named_parameters()}
    trainer = pl.Trainer(accelerator="cpu", max_epochs=1, default_root_dir=tmp_path,
                         logger=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, DataLoader(tasks, batch_size=8, collate_fn=collate_tasks),
                DataLoader(val, batch_size=5, collate_fn=collate_tasks))
    assert trainer.global_step == 5
    assert 0 < float(trainer.callback_metrics["val/loss"]) < 100
    assert "train/support_loss" in trainer.callback_metrics
    trained = {n: p.detach().clone() for n, p in module.learner.named_parameters()}
    assert any(not torch.equal(before[n], trained[n]) for n in trained)
    saved = next((tmp_path / "checkpoints").glob("*.ckpt"))
    restored = MetaLearningModule.load_from_checkpoint(saved, learner=_learner())
    assert restored.hparams.meta_lr == 1e-2
    for name, p in restored.learner.named_parameters():
        assert torch.equal(p, trained[name]), name


def test_a_ddp_wrapped_model_is_refused_with_the_fix(tmp_path) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'group'}", rank=0,
                            world_size=1)
    try:
        wrapped = nn.parallel.DistributedDataParallel(nn.Linear(1, 1))
        with pytest.raises(ValueError, match="Wrap the learner instead: MAML"):
            MAML(wrapped)
    finally:
        dist.destroy_process_group()
