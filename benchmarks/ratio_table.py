"""Reads the RESULT lines of bench_train.py and the TORCH lines of the PyTorch peer from
one log and prints the side-by-side table: images/s, derm_jax / torch, TFLOP/s, MFU.

  python benchmarks/ratio_table.py LOG [--peak_bf16=989e12 --peak_fp32=67e12]
MFU = achieved FLOP/s / the chip's dense peak for the step's precision (defaults: H100
SXM, bf16 989 TFLOP/s, fp32 67 TFLOP/s without TF32; TF32 matmuls reach 495).
"""

from __future__ import annotations

import argparse
import json


def _rows(path: str):
  ours, torch = [], []
  with open(path) as f:
    for line in f:
      if line.startswith("RESULT "):
        ours.append(json.loads(line[len("RESULT "):]))
      elif line.startswith("TORCH "):
        torch.append(json.loads(line[len("TORCH "):]))
  return ours, torch


def _torch_rate(torch, model: str, batch: int, amp: str, channels_last: bool,
                compiled: bool = False):
  for t in torch:
    if (t.get("model") == model and t.get("batch") == batch and t.get("amp") == amp
        and bool(t.get("channels_last")) == channels_last
        and bool(t.get("compile")) == compiled):
      return t.get("img_s") or t.get("images_per_s")
  return None


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("log")
  p.add_argument("--peak_bf16", type=float, default=989e12)
  p.add_argument("--peak_fp32", type=float, default=67e12)
  a = p.parse_args()
  ours, torch = _rows(a.log)
  print("| step | dtype | derm_jax (a) img/s | (b) end-to-end | (b)/(a) | torch same precision "
        "| torch bf16 + channels_last | + torch.compile | ratio vs same | ratio vs bf16+CL "
        "| ratio vs compiled | TFLOP/s | MFU |")
  print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
  for r in ours:
    model = r["model"]
    dtype = r.get("dtype", "float32")
    amp = "bf16" if dtype == "bfloat16" else "none"
    same = _torch_rate(torch, model, r["batch_size"], amp, amp == "bf16")
    best = _torch_rate(torch, model, r["batch_size"], "bf16", True)
    compiled = _torch_rate(torch, model, r["batch_size"], "bf16", True, compiled=True)
    a_rate, b_rate = r["resident_img_s"], r["end_to_end_img_s"]
    flops = r["achieved_gflop_s"] * 1e9
    peak = a.peak_bf16 if dtype == "bfloat16" else a.peak_fp32

    def ratio(t):
      return f"{a_rate / t:.2f}x" if t else "n/a"

    print(f"| {model} b{r['batch_size']} {r['image_size']}px | {dtype} | {a_rate:,.0f} | "
          f"{b_rate:,.0f} | {100 * b_rate / a_rate:.0f}% | {same or 'n/a'} | {best or 'n/a'} | "
          f"{compiled or 'n/a'} | {ratio(same)} | {ratio(best)} | {ratio(compiled)} | "
          f"{flops / 1e12:.1f} | {100 * flops / peak:.1f}% |")


if __name__ == "__main__":
  main()
