"""Lightning: ``last_terms``' keys are fixed when the module is built (``log_dict(sync_dist=True)``
reduces each key across ranks, so every rank must log the same keys at every step), moving weights
and constraint multipliers are reported, and ``LossDSLCallback`` logs them and audits the
constraints. The callback is tested with fakes of the trainer and the LightningModule (nothing
here needs lightning), and under lightning itself when it is installed.

References: ``F.cross_entropy`` and ``F.mse_loss`` for the values, ``warmup(k)``'s definition
(``min(step / k, 1)`` at the step the call used) for the weights.
"""

from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

import lossdsl
from lossdsl.integrations.lightning import LossDSLCallback

SPEC = (
    "param lam = 0.5\n"
    "let data = ce()\n"
    "loss = data + lam * warmup(4) * mse(pred=score, target=y)\n"
    "subject to mae(pred=score, target=y) <= 0.5 as fit\n"
)
KEYS = ["data", "mse", "mae", "fit", "fit.surrogate", "fit.violation", "fit.multiplier", "weight/mse", "total"]


def _batch(seed: int, n: int = 16, spread: float = 1.0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"pred": torch.randn(n, 3, generator=g), "target": torch.randint(0, 3, (n,), generator=g),
            "score": spread * torch.randn(n, generator=g), "y": torch.zeros(n)}


def test_last_terms_keys_are_the_same_on_every_rank_and_at_every_step():
    """Two "ranks" on different data (the constraint kept on one, violated on the other): the
    same keys, in the same order, from the first call on, at every step."""
    ranks = [lossdsl.compile(SPEC), lossdsl.compile(SPEC)]
    for step in range(6):
        seen = []
        for rank, loss_fn in enumerate(ranks):
            loss_fn(**_batch(10 * step + rank, spread=0.01 if rank == 0 else 3.0))
            seen.append(list(loss_fn.last_terms))
        assert seen[0] == seen[1] == KEYS
        assert all(value.dim() == 0 for value in ranks[0].last_terms.values())


def test_moving_weights_and_multipliers_are_the_values_the_call_used():
    loss_fn = lossdsl.compile(SPEC)
    for step in range(6):
        batch = _batch(step, spread=3.0)  # mae about 2.4: the constraint is violated, its multiplier grows
        multiplier = loss_fn.multipliers[0].clone()
        total = loss_fn(**batch)
        terms = loss_fn.last_terms
        weight = 0.5 * min(step / 4, 1.0)  # lam * warmup(4) at the step this call used
        torch.testing.assert_close(terms["weight/mse"], torch.tensor(weight))
        torch.testing.assert_close(terms["fit.multiplier"], multiplier)
        mse = F.mse_loss(batch["score"], batch["y"])
        torch.testing.assert_close(terms["mse"], mse)
        torch.testing.assert_close(terms["data"], F.cross_entropy(batch["pred"], batch["target"]))
        torch.testing.assert_close(terms["total"], total.detach())
    assert float(loss_fn.multipliers[0]) > 0
    # eval mode: the counter stays, and so does the weight read
    loss_fn.eval()
    loss_fn(**_batch(99))
    torch.testing.assert_close(loss_fn.last_terms["weight/mse"], torch.tensor(0.5))


def test_under_inference_mode_the_weight_read_is_still_the_step_the_call_used():
    """There the counter moves in place (+= 1), so last_terms keeps a copy of the step it used."""
    loss_fn = lossdsl.compile("mse() + warmup(4) * mae()")
    with torch.inference_mode():
        for step in range(3):
            loss_fn(torch.randn(4), torch.randn(4))
            torch.testing.assert_close(loss_fn.last_terms["weight/mae"], torch.tensor(step / 4))
    assert int(loss_fn.step_count) == 3


def test_a_loss_weighed_twice_and_a_let_get_their_own_weight_keys():
    loss_fn = lossdsl.compile("let both = mse() + mae()\nloss = warmup(2) * mse() + cosine(1, 0, 2) * mse() "
                              "+ linear(0, 2, 2) * both")
    loss_fn(torch.randn(4), torch.randn(4))
    loss_fn(torch.randn(4), torch.randn(4))  # step 1
    terms = loss_fn.last_terms
    # the let's mse() is mse_1 (labels are numbered in source order)
    assert [k for k in terms if k.startswith("weight/")] == ["weight/mse_2", "weight/mse_3", "weight/both"]
    torch.testing.assert_close(terms["weight/mse_2"], torch.tensor(0.5))
    torch.testing.assert_close(terms["weight/mse_3"], torch.tensor(0.5))  # half way down a half cosine
    torch.testing.assert_close(terms["weight/both"], torch.tensor(1.0))


class _FakeModule:
    """What the callback reads of a LightningModule: the loss attribute and ``log_dict``."""

    def __init__(self, loss_fn):
        self.loss_fn = loss_fn
        self.logged: list[tuple[dict, dict]] = []

    def log_dict(self, metrics, **options):
        self.logged.append((dict(metrics), options))


def test_the_callback_logs_the_scalar_terms_every_k_batches_with_sync_dist():
    module = _FakeModule(lossdsl.compile(SPEC))
    callback = LossDSLCallback(log_every=2)
    trainer = SimpleNamespace(current_epoch=0)
    callback.on_train_batch_end(trainer, module, None, None, 0)  # before any call: nothing to log
    assert module.logged == []
    for batch_idx in range(5):
        module.loss_fn(**_batch(batch_idx))
        callback.on_train_batch_end(trainer, module, None, None, batch_idx)
        if batch_idx % 2 == 0:
            metrics, options = module.logged[-1]
            assert list(metrics) == [f"loss/{k}" for k in KEYS]
            assert options == {"on_step": True, "on_epoch": False, "sync_dist": True}
            torch.testing.assert_close(metrics["loss/weight/mse"], torch.tensor(0.5 * min(batch_idx / 4, 1.0)))
    assert len(module.logged) == 3  # batches 0, 2, 4
    # a reduction=none loss is not a scalar: not logged (log_dict takes scalars)
    module = _FakeModule(lossdsl.compile("mse(reduction=none)"))
    module.loss_fn(torch.randn(3), torch.randn(3))
    LossDSLCallback().on_train_batch_end(trainer, module, None, None, 0)
    assert module.logged == []


@pytest.mark.parametrize("spread, holds", [(0.1, True), (3.0, False)])
def test_the_epoch_end_audit_logs_whether_each_constraint_holds(spread, holds):
    data = _batch(5, n=64, spread=spread)
    module = _FakeModule(lossdsl.compile(SPEC))
    callback = LossDSLCallback(audit=lambda trainer, pl_module: data)
    callback.on_train_epoch_end(SimpleNamespace(current_epoch=0), module)
    metrics, options = module.logged[-1]
    mae = F.l1_loss(data["score"], data["y"]).item()
    assert (mae <= 0.5) is holds
    assert metrics["audit/fit"].item() == float(holds) and metrics["audit/holds"].item() == float(holds)
    assert metrics["audit/fit.value"].item() == pytest.approx(mae, rel=1e-6)
    assert options == {"on_step": False, "on_epoch": True, "sync_dist": True}
    assert callback.last_audit.constraints["fit"].holds is holds
    # batches of inputs (a generator over a data loader) give the same audit
    batches = LossDSLCallback(audit=lambda t, m: ({k: v[i:i + 16] for k, v in data.items()} for i in range(0, 64, 16)))
    batches.on_train_epoch_end(None, module)
    assert module.logged[-1][0]["audit/fit.value"].item() == pytest.approx(mae, rel=1e-6)


def test_the_callback_names_a_wrong_attribute_and_bad_arguments():
    with pytest.raises(TypeError, match=r"_FakeModule.criterion must be a lossdsl LossModule.*loss_attr="):
        LossDSLCallback(loss_attr="criterion").on_train_batch_end(None, _FakeModule(None), None, None, 0)
    with pytest.raises(TypeError, match="log_every must be a positive int"):
        LossDSLCallback(log_every=0)
    with pytest.raises(lossdsl.LossSpecError, match="E401.*audit= must return the loss's inputs"):
        LossDSLCallback(audit=lambda t, m: [1, 2]).on_train_epoch_end(None, _FakeModule(lossdsl.compile(SPEC)))


def test_the_integrations_import_neither_lightning_nor_transformers():
    """``import lossdsl`` and the hf module load neither; the callback works as a plain object when
    lightning is absent (simulated: the import of either package fails)."""
    code = (
        "import sys\n"
        "for name in ('lightning', 'lightning.pytorch', 'pytorch_lightning'): sys.modules[name] = None\n"
        "import torch, lossdsl, lossdsl.integrations.hf\n"
        "assert 'transformers' not in sys.modules\n"
        "from lossdsl.integrations.lightning import LossDSLCallback\n"
        "assert LossDSLCallback.__mro__[1] is object\n"
        "class M:\n"
        "    loss_fn = lossdsl.compile('mse()'); logged = []\n"
        "    def log_dict(self, metrics, **options): self.logged.append(metrics)\n"
        "m = M(); m.loss_fn(torch.ones(2), torch.zeros(2))\n"
        "LossDSLCallback().on_train_batch_end(None, m, None, None, 0)\n"
        "assert float(m.logged[0]['loss/mse']) == 1.0 and float(m.logged[0]['loss/total']) == 1.0\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_under_lightning_the_callback_logs_through_a_real_trainer(tmp_path):
    """With lightning installed: a few CPU steps of a linear model; the logged keys are the loss's."""
    pl = pytest.importorskip("lightning.pytorch")
    data = _batch(1, n=32)

    class Model(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Linear(3, 4)
            self.loss_fn = lossdsl.compile(SPEC)

        def training_step(self, batch, batch_idx):
            (x,) = batch
            out = self.net(x)
            return self.loss_fn(pred=out[:, :3], target=data["target"][: len(x)], score=out[:, 3], y=torch.zeros(len(x)))

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(data["pred"]), batch_size=8)
    callback = LossDSLCallback(audit=lambda trainer, module: {**data, "pred": module.net(data["pred"])[:, :3],
                                                              "score": module.net(data["pred"])[:, 3]})
    trainer = pl.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[callback],
                         default_root_dir=tmp_path)
    model = Model()
    trainer.fit(model, loader)
    assert {f"loss/{k}" for k in KEYS} <= set(trainer.callback_metrics)
    assert int(model.loss_fn.step_count) == 4  # four batches, one step each, none added by the callback
    assert trainer.callback_metrics["audit/holds"].item() == float(callback.last_audit.holds)
