"""SAEHD (DF / LIAE with -u -d -t) in plain PyTorch, written the way a PyTorch user would, for timing only.

The network mirrors engine/models/saehd.py layer by layer (DFL_SPEC §3.3): the same convs with
symmetric zero padding k//2, Glorot-uniform kernels and zero biases, leaky ReLU 0.1 after
Downscale/Upscale convs and 0.2 in residual blocks, depth-to-space in TF's DCR channel order,
channel-major flattening (NCHW is PyTorch's native layout), pixel norm of the code with -u, and
sigmoid RGB/mask outputs, so the parameter counts are equal (benchmarks.compare_torch asserts it).
The loss is SAEHD's (§3.4): per side 10·DSSIM (kernel res/11.6; plus res/23.2 at 256 px and up,
σ = 1.5, VALID) + 10·MSE on images multiplied by the soft mask clip(blur(mask), 0, 0.5)·2, plus
10·MSE of the predicted mask, computed in float32. The Gaussian filters are separable depthwise
convolutions. The optimiser is torch.optim.Adam (torch has no AdaBelief; both keep two moments per
parameter and do the same elementwise work per step).

Augmentation is done the PyTorch way: a Dataset whose __getitem__ augments one 256 px whole-face
sample with OpenCV on the CPU (random rotation/zoom/shift crop to the model resolution with
cv2.warpAffine, DFL's elastic random warp with cv2.resize + cv2.remap for the input, random flip
of dst) in DataLoader worker processes; the uint8 batches are moved to the device and scaled there.

Steps timed (the same two as benchmarks.train_throughput):
* full: next(DataLoader) -> device -> model -> SAEHD loss -> backward -> Adam step;
* model_only: model + MSE of the four outputs (RGB and masks of src->src, dst->dst) -> backward ->
  Adam step, on uniform random inputs already on the device.
Modes: eager, eager-bf16 (torch.autocast bfloat16), compile (torch.compile of model + loss),
compile-bf16; --channels_last puts the model and inputs in channels_last memory format.

Needs only torch, numpy and OpenCV (no JAX, no engine imports). Prints one line per result,
`RESULT {json}`, as soon as it is measured; `--params_only` prints `PARAMS {json}` and exits.

Run: python benchmarks/baselines/torch_saehd.py --archi=liae-ud --resolution=64 --batch=2
     --ae_dims=256 --e_dims=64 --d_dims=64 --d_mask_dims=22 --faces_npz=faces.npz [--modes=eager,compile]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from typing import Callable, Iterator

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

UPDOWN_SLOPE, RESIDUAL_SLOPE = 0.1, 0.2
SSIM_SIGMA = 1.5
MODES = ("eager", "eager-bf16", "compile", "compile-bf16")
# DFL's augmentation ranges (engine.augment.pipeline uses the same).
ROTATION_DEG, SCALE, SHIFT, FLIP_PROB = 10.0, 0.15, 0.05, 0.4
WARP_CELLS, WARP_JITTER = (2, 4, 8), 0.24
FULL_FACE_SHARE = 0.75  # the share of a 256 px whole_face crop the full-face training crop spans


# ---------------------------------------------------------------- network


def conv(cin: int, cout: int, k: int, stride: int = 1) -> nn.Conv2d:
    layer = nn.Conv2d(cin, cout, k, stride, padding=k // 2)
    nn.init.xavier_uniform_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


def linear(fin: int, fout: int) -> nn.Linear:
    layer = nn.Linear(fin, fout)
    nn.init.xavier_uniform_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


def depth_to_space(x: torch.Tensor) -> torch.Tensor:
    """TF's DCR order on NCHW: out[c, 2h+i, 2w+j] = in[(2i+j)·C + c, h, w] (pixel_shuffle is CRD)."""
    n, c4, h, w = x.shape
    c = c4 // 4
    return x.view(n, 2, 2, c, h, w).permute(0, 3, 4, 1, 5, 2).reshape(n, c, 2 * h, 2 * w)


class Downscale(nn.Module):
    def __init__(self, cin: int, cout: int, k: int = 5):
        super().__init__()
        self.conv = conv(cin, cout, k, 2)

    def forward(self, x):
        return F.leaky_relu(self.conv(x), UPDOWN_SLOPE)


class Upscale(nn.Module):
    def __init__(self, cin: int, cout: int, k: int = 3):
        super().__init__()
        self.conv = conv(cin, 4 * cout, k)

    def forward(self, x):
        return depth_to_space(F.leaky_relu(self.conv(x), UPDOWN_SLOPE))


class Residual(nn.Module):
    def __init__(self, ch: int, k: int = 3):
        super().__init__()
        self.conv1, self.conv2 = conv(ch, ch, k), conv(ch, ch, k)

    def forward(self, x):
        y = self.conv2(F.leaky_relu(self.conv1(x), RESIDUAL_SLOPE))
        return F.leaky_relu(x + y, RESIDUAL_SLOPE)


class Encoder(nn.Module):
    def __init__(self, e: int, u: bool, t: bool):
        super().__init__()
        if t:
            layers = [Downscale(3, e), Residual(e), Downscale(e, 2 * e), Downscale(2 * e, 4 * e),
                      Downscale(4 * e, 8 * e), Downscale(8 * e, 8 * e), Residual(8 * e)]
        else:
            widths = [e * min(2 ** i, 8) for i in range(4)]
            layers = [Downscale(cin, cout) for cin, cout in zip([3] + widths[:-1], widths)]
        self.body, self.u = nn.Sequential(*layers), u

    def forward(self, x):
        x = self.body(x).flatten(1)  # NCHW flattening = DFL's channel-major order
        if self.u:
            x = x * torch.rsqrt(x.float().square().mean(-1, keepdim=True) + 1e-6).to(x.dtype)
        return x


class Inter(nn.Module):
    def __init__(self, fin: int, ae: int, ae_out: int, low: int, upscale: bool):
        super().__init__()
        self.low, self.ae_out = low, ae_out
        self.dense1, self.dense2 = linear(fin, ae), linear(ae, low * low * ae_out)
        self.upscale = Upscale(ae_out, ae_out) if upscale else None

    def forward(self, x):
        x = self.dense2(self.dense1(x)).view(-1, self.ae_out, self.low, self.low)
        return self.upscale(x) if self.upscale is not None else x


class Decoder(nn.Module):
    def __init__(self, cin: int, d: int, m: int, double: bool, t: bool):
        super().__init__()
        rgb_widths = [8 * d, 8 * d, 4 * d, 2 * d] if t else [8 * d, 4 * d, 2 * d]
        mask_widths = ([8 * m, 8 * m, 4 * m, 2 * m] if t else [8 * m, 4 * m, 2 * m]) + ([m] if double else [])
        rgb = []
        for a, b in zip([cin] + rgb_widths[:-1], rgb_widths):
            rgb += [Upscale(a, b), Residual(b)]
        self.rgb = nn.Sequential(*rgb)
        self.mask = nn.Sequential(*[Upscale(a, b) for a, b in zip([cin] + mask_widths[:-1], mask_widths)])
        self.heads = nn.ModuleList([conv(2 * d, 3, k) for k in ([1, 3, 3, 3] if double else [1])])
        self.mask_head = conv(mask_widths[-1], 1, 1)
        self.double = double

    def forward(self, z):
        x = self.rgb(z)
        rgb = torch.cat([head(x) for head in self.heads], 1)
        if self.double:
            rgb = depth_to_space(rgb)
        return torch.sigmoid(rgb.float()), torch.sigmoid(self.mask_head(self.mask(z)).float())


def _conv_out(size: int, k: int = 5, stride: int = 2) -> int:
    return (size + 2 * (k // 2) - k) // stride + 1


class SAEHD(nn.Module):
    """The two-identity autoencoder; forward(warped_src, warped_dst[, swap]) -> the reconstructions."""

    def __init__(self, archi: str, resolution: int, ae_dims: int, e_dims: int, d_dims: int, d_mask_dims: int):
        super().__init__()
        kind, _, opts = archi.lower().partition("-")
        if kind not in ("df", "liae") or set(opts) - set("udt"):
            raise ValueError(f"archi {archi!r}: expected df or liae with options from u, d, t")
        u, double, t = "u" in opts, "d" in opts, "t" in opts
        size = resolution
        for _ in range(5 if t else 4):
            size = _conv_out(size)
        fin, low = size * size * 8 * e_dims, resolution // (32 if double else 16)
        self.kind = kind
        self.encoder = Encoder(e_dims, u, t)
        if kind == "df":
            self.inter = Inter(fin, ae_dims, ae_dims, low, not t)
            self.decoder_src = Decoder(ae_dims, d_dims, d_mask_dims, double, t)
            self.decoder_dst = Decoder(ae_dims, d_dims, d_mask_dims, double, t)
        else:
            self.inter_AB = Inter(fin, ae_dims, 2 * ae_dims, low, not t)
            self.inter_B = Inter(fin, ae_dims, 2 * ae_dims, low, not t)
            self.decoder = Decoder(4 * ae_dims, d_dims, d_mask_dims, double, t)

    def components(self) -> dict[str, nn.Module]:
        names = ("encoder", "inter", "decoder_src", "decoder_dst") if self.kind == "df" else \
            ("encoder", "inter_AB", "inter_B", "decoder")
        return {name: getattr(self, name) for name in names}

    def forward(self, src, dst, swap: bool = False):
        """The reconstructions (and, with swap, the swap src->dst), as engine.models.saehd computes
        them; its training step decodes the swap only for the style losses, which this baseline
        does not have."""
        n = src.shape[0]
        feats = self.encoder(torch.cat([src, dst], 0))
        if self.kind == "df":
            z = self.inter(feats)
            rgb, mask = self.decoder_src(z if swap else z[:n])
            dst_dst, dst_dstm = self.decoder_dst(z[n:])
        else:
            ab = self.inter_AB(feats)
            ab_src, ab_dst = ab[:n], ab[n:]
            b_dst = self.inter_B(feats[n:])
            codes = [torch.cat([ab_src, ab_src], 1), torch.cat([b_dst, ab_dst], 1)]
            rgb, mask = self.decoder(torch.cat(codes + ([torch.cat([ab_dst, ab_dst], 1)] if swap else []), 0))
            dst_dst, dst_dstm = rgb[n:2 * n], mask[n:2 * n]
        preds = {"pred_src_src": rgb[:n], "pred_src_srcm": mask[:n], "pred_dst_dst": dst_dst,
                 "pred_dst_dstm": dst_dstm}
        if swap:
            preds.update(pred_src_dst=rgb[-n:], pred_src_dstm=mask[-n:])
        return preds


def param_counts(model: SAEHD) -> dict[str, int]:
    counts = {name: sum(p.numel() for p in m.parameters()) for name, m in model.components().items()}
    counts["total"] = sum(p.numel() for p in model.parameters())
    return counts


# ---------------------------------------------------------------- losses


def _gaussian_filter(x: torch.Tensor, taps: torch.Tensor, pad: int) -> torch.Tensor:
    """Separable depthwise Gaussian (two 1-D convs), zero padding `pad`."""
    c, k = x.shape[1], taps.numel()
    x = F.conv2d(x, taps.view(1, 1, 1, k).expand(c, 1, 1, k), padding=(0, pad), groups=c)
    return F.conv2d(x, taps.view(1, 1, k, 1).expand(c, 1, k, 1), padding=(pad, 0), groups=c)


def _taps(size: int, sigma: float, center: float, device) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float32, device=device) - center
    taps = torch.exp(-x.square() / (2 * sigma * sigma))
    return taps / taps.sum()


def soft_mask(mask: torch.Tensor, resolution: int) -> torch.Tensor:
    sigma = max(1, resolution // 32)
    size = max(3, int(4 * sigma))
    size += 1 - size % 2
    return _gaussian_filter(mask, _taps(size, sigma, size // 2, mask.device), size // 2).clamp(0, 0.5) * 2


def dssim(a: torch.Tensor, b: torch.Tensor, k: int) -> torch.Tensor:
    """(1 − SSIM)/2 per channel with a σ=1.5 window of k taps, VALID, mean over channels -> [B]."""
    taps = _taps(k, SSIM_SIGMA, (k - 1) / 2, a.device)
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    mu_a, mu_b = _gaussian_filter(a, taps, 0), _gaussian_filter(b, taps, 0)
    ab, sq = _gaussian_filter(a * b, taps, 0), _gaussian_filter(a * a + b * b, taps, 0)
    num, den = 2 * mu_a * mu_b, mu_a.square() + mu_b.square()
    ssim = ((num + c1) / (den + c1)) * ((2 * ab - num + c2) / (sq - den + c2))
    return ((1 - ssim.mean((2, 3))) / 2).mean(1)


def saehd_loss(batch: dict[str, torch.Tensor], preds: dict[str, torch.Tensor], resolution: int) -> torch.Tensor:
    """SAEHD's masked DSSIM + MSE + mask loss, batch mean of src + dst, in float32."""
    terms = ((int(resolution / 11.6), 10.0),) if resolution < 256 else \
        ((int(resolution / 11.6), 5.0), (int(resolution / 23.2), 5.0))
    with torch.autocast(batch["target_src"].device.type, enabled=False):
        total = 0.0
        for side in ("src", "dst"):
            target, mask = batch[f"target_{side}"].float(), batch[f"target_{side}m"].float()
            pred, pred_mask = preds[f"pred_{side}_{side}"].float(), preds[f"pred_{side}_{side}m"].float()
            m = soft_mask(mask, resolution)
            t, p = target * m, pred * m
            total = total + sum(w * dssim(t, p, k) for k, w in terms)
            total = total + 10 * (t - p).square().mean((1, 2, 3)) + 10 * (mask - pred_mask).square().mean((1, 2, 3))
        return total.mean()


def mse_loss(batch: dict[str, torch.Tensor], preds: dict[str, torch.Tensor]) -> torch.Tensor:
    """The model-only step's loss: MSE of the four outputs against their targets."""
    return sum((preds[p].float() - batch[t]).square().mean() for p, t in (
        ("pred_src_src", "target_src"), ("pred_dst_dst", "target_dst"),
        ("pred_src_srcm", "target_srcm"), ("pred_dst_dstm", "target_dstm")))


# ---------------------------------------------------------------- data


def _elastic_maps(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """DFL's random warp: control grid jittered by 0.24·cell, upsampled bilinearly, cropped."""
    cells = int(rng.choice(WARP_CELLS))
    cell = size / cells
    grid = np.linspace(0, size, cells + 1, dtype=np.float32)
    mapx, mapy = np.meshgrid(grid, grid)
    for m in (mapx, mapy):
        m[1:-1, 1:-1] += (np.clip(rng.normal(size=(cells - 1, cells - 1)), -2.5, 2.5) / 2.5
                          * WARP_JITTER * cell).astype(np.float32)
    half, big = int(cell / 2), int(size + cell)
    maps = [cv2.resize(m, (big, big))[half:half + size, half:half + size] for m in (mapx, mapy)]
    return maps[0].astype(np.float32), maps[1].astype(np.float32)


class FaceDataset(torch.utils.data.Dataset):
    """256 px whole-face samples -> (warped input, target, target mask) uint8 at the model resolution."""

    def __init__(self, faces: np.ndarray, masks: np.ndarray, resolution: int, flip: bool, seed: int):
        self.faces, self.masks, self.resolution, self.flip, self.seed = faces, masks, resolution, flip, seed
        self.calls = 0

    def __len__(self) -> int:
        return len(self.faces)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        self.calls += 1
        rng = np.random.default_rng((self.seed, os.getpid(), self.calls, index))
        face, mask, res = self.faces[index], self.masks[index], self.resolution
        size = face.shape[0]
        zoom = rng.uniform(1 - SCALE, 1 + SCALE) * res / (FULL_FACE_SHARE * size)
        matrix = cv2.getRotationMatrix2D((size / 2, size / 2), rng.uniform(-ROTATION_DEG, ROTATION_DEG), zoom)
        matrix[:, 2] += res / 2 - size / 2 + rng.uniform(-SHIFT, SHIFT, 2) * res
        if self.flip and rng.random() < FLIP_PROB:
            matrix = np.array([[-1, 0, res - 1], [0, 1, 0]], np.float64) @ np.vstack([matrix, [0, 0, 1]])
        target = cv2.warpAffine(face, matrix, (res, res), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REPLICATE)
        target_mask = cv2.warpAffine(mask, matrix, (res, res), flags=cv2.INTER_LINEAR)
        warped = cv2.remap(target, *_elastic_maps(rng, res), cv2.INTER_CUBIC, borderMode=cv2.BORDER_REPLICATE)
        return warped, target, target_mask[..., None]


def _batches(faces: np.ndarray, masks: np.ndarray, resolution: int, batch: int, workers: int,
             device: torch.device) -> Iterator[dict[str, torch.Tensor]]:
    """Endless src + dst batches (both sides read the same faces, dst flipped), float on the device."""
    loaders = {}
    for side, flip in (("src", False), ("dst", True)):
        data = FaceDataset(faces, masks, resolution, flip, seed=len(loaders))
        sampler = torch.utils.data.RandomSampler(data, replacement=True, num_samples=1 << 30)
        loaders[side] = iter(torch.utils.data.DataLoader(
            data, batch_size=batch, sampler=sampler, num_workers=workers, pin_memory=device.type == "cuda",
            persistent_workers=workers > 0, prefetch_factor=4 if workers else None, drop_last=True))
    while True:
        out = {}
        for side, loader in loaders.items():
            warped, target, mask = (x.to(device, non_blocking=True) for x in next(loader))
            out[f"warped_{side}"] = warped.permute(0, 3, 1, 2).float() / 255
            out[f"target_{side}"] = target.permute(0, 3, 1, 2).float() / 255
            out[f"target_{side}m"] = mask.permute(0, 3, 1, 2).float() / 255
        yield out


# ---------------------------------------------------------------- timing


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _random_inputs(batch: int, resolution: int, device: torch.device) -> dict[str, torch.Tensor]:
    gen = torch.Generator(device="cpu").manual_seed(0)
    channels = {"warped_src": 3, "warped_dst": 3, "target_src": 3, "target_dst": 3, "target_srcm": 1, "target_dstm": 1}
    return {k: torch.rand(batch, c, resolution, resolution, generator=gen).to(device) for k, c in channels.items()}


def _to_layout(batch: dict[str, torch.Tensor], channels_last: bool) -> dict[str, torch.Tensor]:
    if not channels_last:
        return batch
    return {k: v.contiguous(memory_format=torch.channels_last) for k, v in batch.items()}


def measure(args: argparse.Namespace, mode: str, faces: np.ndarray, masks: np.ndarray,
            device: torch.device) -> dict:
    """Times the full and the model-only step of one mode, taking turns like benchmarks.train_throughput."""
    torch.manual_seed(0)
    model = SAEHD(args.archi, args.resolution, args.ae_dims, args.e_dims, args.d_dims, args.d_mask_dims).to(device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=5e-5)
    bf16 = mode.endswith("-bf16")

    def full_loss(batch):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            return saehd_loss(batch, model(batch["warped_src"], batch["warped_dst"]), args.resolution)

    def model_loss(batch):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            return mse_loss(batch, model(batch["warped_src"], batch["warped_dst"]))

    if mode.startswith("compile"):
        full_loss, model_loss = torch.compile(full_loss), torch.compile(model_loss)
    batches = _batches(faces, masks, args.resolution, args.batch, args.workers, device)
    inputs = _to_layout(_random_inputs(args.batch, args.resolution, device), args.channels_last)

    def train(loss_fn: Callable, batch) -> torch.Tensor:
        loss = loss_fn(batch)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    steps = {"full": lambda: train(full_loss, _to_layout(next(batches), args.channels_last)),
             "model_only": lambda: train(model_loss, inputs)}
    start = time.perf_counter()
    for run in steps.values():  # the first call compiles in compile modes
        run()
    _sync(device)
    first_s = time.perf_counter() - start
    for run in steps.values():
        for _ in range(args.warmup):
            run()
    _sync(device)
    times = {name: [] for name in steps}
    for _ in range(args.steps):
        for name, run in steps.items():
            start = time.perf_counter()
            loss = run()
            _sync(device)
            times[name].append(time.perf_counter() - start)
    result = {"mode": mode, "channels_last": args.channels_last, "workers": args.workers,
              "threads": torch.get_num_threads(), "first_steps_s": first_s, "loss": float(loss.detach())}
    for name, ts in times.items():
        step = statistics.median(ts)
        result[name] = {"step_ms": 1e3 * step, "samples_per_s": 2 * args.batch / step,
                        "step_ms_all": [1e3 * t for t in ts]}
    return result


def _synthetic_faces(n: int, size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Smooth random faces with elliptical masks, when no --faces_npz is given."""
    rng = np.random.default_rng(0)
    low = rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)
    faces = np.stack([cv2.resize(f, (size, size), interpolation=cv2.INTER_CUBIC) for f in low])
    y, x = np.mgrid[:size, :size]
    ellipse = (((x - size / 2) / (0.3 * size)) ** 2 + ((y - size / 2) / (0.4 * size)) ** 2 <= 1)
    return faces, np.repeat((ellipse * 255).astype(np.uint8)[None], n, 0)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--archi", default="liae-ud")
    p.add_argument("--resolution", type=int, default=64)
    p.add_argument("--batch", type=int, default=2, help="src faces per step (and as many dst)")
    for name, default in (("ae_dims", 256), ("e_dims", 64), ("d_dims", 64), ("d_mask_dims", 22)):
        p.add_argument(f"--{name}", type=int, default=default)
    p.add_argument("--modes", default="eager,eager-bf16", help=f"comma-separated, from {', '.join(MODES)}")
    p.add_argument("--channels_last", action="store_true")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--workers", type=int, default=max(1, min(8, (os.cpu_count() or 2) // 2)),
                   help="DataLoader worker processes per side")
    p.add_argument("--faces_npz", help="npz with faces uint8 [N,256,256,3] and masks uint8 [N,256,256]")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--params_only", action="store_true")
    args = p.parse_args(argv)
    bad = [m for m in args.modes.split(",") if m not in MODES]
    if bad:
        p.error(f"--modes: unknown {bad}; choose from {MODES}")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    model = SAEHD(args.archi, args.resolution, args.ae_dims, args.e_dims, args.d_dims, args.d_mask_dims)
    print("PARAMS " + json.dumps(param_counts(model)), flush=True)
    if args.params_only:
        return
    del model
    device = torch.device(args.device)
    if args.faces_npz:
        with np.load(args.faces_npz) as data:
            faces, masks = data["faces"], data["masks"]
    else:
        faces, masks = _synthetic_faces(64)
    masks = masks.reshape(masks.shape[:3])
    env = {"torch": torch.__version__, "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu"}
    for mode in args.modes.split(","):
        try:
            result = measure(args, mode, faces, masks, device)
        except Exception as e:  # one mode failing (e.g. no compiler for torch.compile) must not cost the others
            result = {"mode": mode, "error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]}
        print("RESULT " + json.dumps({**env, **result}), flush=True)


if __name__ == "__main__":
    main()
