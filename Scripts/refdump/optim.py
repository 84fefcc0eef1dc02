"""Optimiser reference dumps (Sources/Optim/): `schedules.safetensors` and `adamw.safetensors`.

schedules: for each case NAME, NAME.lr = the learning rate PyTorch's scheduler gives each step
(the group's lr before the optimiser step; 0..N-1), and metadata NAME = the schedule's JSON as
the Swift `LearningRateSchedule` decodes it.
  constant       a plain optimiser, no scheduler
  warmup_cosine  SequentialLR([LinearLR(1/W → 1 over W−1 steps), CosineAnnealingLR(T−W, eta_min)], [W])
  one_cycle      OneCycleLR defaults (cos, pct_start 0.3, div 25, final_div 1e4)
  one_cycle_custom  OneCycleLR with pct_start 0.25, div 10, final_div 100

adamw: 10 steps of torch.optim.AdamW on a tiny model (fc1 Linear(5, 8) → LayerNorm(8) → GELU →
fc2 Linear(8, 3)), MSE loss on a different fixed batch each step, clip_grad_norm_ then
AdamW with two groups (weights: weight decay; biases and LayerNorm: none) and a warmup+cosine
learning rate (from the same SequentialLR, rounded to float32 as the Swift schedule returns it),
all in float64 from float32 starting values. Keys: param.KEY (start), x (10, 4, 5), target
(10, 4, 3), lr / norm / loss (10), final.KEY, state.KEY.exp_avg, state.KEY.exp_avg_sq; metadata:
optimizer and schedule JSON, max_norm.
"""
import json
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from common import randn, round_module, save, seed

warnings.filterwarnings("ignore")


def sequential_warmup_cosine(opt, peak, min_lr, warmup, total):
    s = torch.optim.lr_scheduler
    return s.SequentialLR(opt, [s.LinearLR(opt, start_factor=1 / warmup, end_factor=1.0, total_iters=warmup - 1),
                                s.CosineAnnealingLR(opt, T_max=total - warmup, eta_min=min_lr)],
                          milestones=[warmup])


def lrs(make_scheduler, base_lr, steps):
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([p], lr=base_lr)
    sched = make_scheduler(opt)
    out = []
    for _ in range(steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        if sched is not None:
            sched.step()
    return out


def generate_schedules():
    out, meta = {}, {}

    def case(name, config, make, base_lr, steps):
        values = lrs(make, base_lr, steps)
        out[f"{name}.lr"] = torch.tensor(values, dtype=torch.float64)
        meta[name] = json.dumps(config)

    case("constant", {"type": "constant", "lr": 3e-4}, lambda o: None, 3e-4, 20)
    case("warmup_cosine", {"type": "warmup_cosine", "peak_lr": 1e-3, "min_lr": 1e-5, "warmup_steps": 5,
                           "total_steps": 50},
         lambda o: sequential_warmup_cosine(o, 1e-3, 1e-5, 5, 50), 1e-3, 50)
    case("one_cycle", {"type": "one_cycle", "max_lr": 0.01, "total_steps": 50},
         lambda o: torch.optim.lr_scheduler.OneCycleLR(o, max_lr=0.01, total_steps=50), 0.01, 50)
    case("one_cycle_custom", {"type": "one_cycle", "max_lr": 2e-3, "total_steps": 37, "pct_start": 0.25,
                              "div_factor": 10, "final_div_factor": 100},
         lambda o: torch.optim.lr_scheduler.OneCycleLR(o, max_lr=2e-3, total_steps=37, pct_start=0.25,
                                                       div_factor=10, final_div_factor=100), 2e-3, 37)
    save("schedules", out, meta)


class TinyModel(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = torch.nn.Linear(5, 8)
        self.norm = torch.nn.LayerNorm(8)
        self.fc2 = torch.nn.Linear(8, 3)

    def forward(self, x):
        return self.fc2(F.gelu(self.norm(self.fc1(x))))


def generate_adamw():
    seed(41)
    steps, max_norm = 10, 0.5
    model = TinyModel()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.5)
        model.norm.weight.add_(1.0)
    model = round_module(model)
    start = {f"param.{k}": v.clone() for k, v in model.state_dict().items()}
    x = randn(steps, 4, 5)
    target = randn(steps, 4, 3)
    config = {"beta1": 0.9, "beta2": 0.95, "eps": 1e-8, "weight_decay": 0.1}
    schedule = {"type": "warmup_cosine", "peak_lr": 0.02, "min_lr": 1e-3, "warmup_steps": 3, "total_steps": steps}
    decay = [p for k, p in model.named_parameters() if k.endswith("weight") and not k.startswith("norm")]
    no_decay = [p for k, p in model.named_parameters() if not (k.endswith("weight") and not k.startswith("norm"))]
    assert len(decay) == 2 and len(no_decay) == 4
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": config["weight_decay"]},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=schedule["peak_lr"], betas=(config["beta1"], config["beta2"]), eps=config["eps"])
    schedule_lrs = lrs(lambda o: sequential_warmup_cosine(o, 0.02, 1e-3, 3, steps), 0.02, steps)
    lr_used, norms, losses = [], [], []
    for s in range(steps):
        lr = float(np.float32(schedule_lrs[s]))  # the Swift schedule returns Float32
        for g in opt.param_groups:
            g["lr"] = lr
        opt.zero_grad(set_to_none=False)
        loss = F.mse_loss(model(x[s]), target[s])
        loss.backward()
        norms.append(torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm).item())
        opt.step()
        lr_used.append(lr)
        losses.append(loss.item())
    clipped = sum(n > max_norm for n in norms)
    assert 0 < clipped < steps, f"clipping should be active in some steps only: {norms}"
    out = dict(start)
    out["x"], out["target"] = x, target
    out["lr"] = torch.tensor(lr_used, dtype=torch.float64)
    out["norm"] = torch.tensor(norms, dtype=torch.float64)
    out["loss"] = torch.tensor(losses, dtype=torch.float64)
    names = dict((id(p), k) for k, p in model.named_parameters())
    for k, v in model.state_dict().items():
        out[f"final.{k}"] = v
    for p, st in opt.state.items():
        out[f"state.{names[id(p)]}.exp_avg"] = st["exp_avg"]
        out[f"state.{names[id(p)]}.exp_avg_sq"] = st["exp_avg_sq"]
        assert int(st["step"]) == steps
    print(f"  norms {[round(n, 3) for n in norms]}, clipped in {clipped} of {steps} steps")
    save("adamw", out, {"optimizer": json.dumps(config), "schedule": json.dumps(schedule), "max_norm": max_norm,
                        "steps": steps})


def generate():
    generate_schedules()
    generate_adamw()
