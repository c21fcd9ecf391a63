"""Model benchmarks (chapters 04-06): training-step speed and cached vs uncached generation.

    python bench/bench_model.py                         # CPU: nano and r50
    python bench/bench_model.py --threads 1             # same, one thread (often faster on a busy 2-core box)
    python bench/bench_model.py --device cuda --amp     # GPU: r50 at 384 and 640 px, bf16 autocast

Prints figures; it is not a test. Models are untrained (pretrained=False, nothing is downloaded).

- Training step: forward + weighted loss + backward + AdamW step on random images and random
  token sequences of the preset's full length (sequence augmentation always fills to
  max_objects: nano 10 objects = 51 input tokens, r50 100 objects = 501). CPU: nano batch 8
  at 128 px, r50 batch 2 at 384 px.
- Generation: greedy decoding of 100 objects = 501 tokens after BOS for one image (delayed EOS:
  the full length is always generated). The image is encoded once in both modes.
  *cached*: one new token per step through the key/value cache.
  *uncached*: every step re-runs the decoder over the whole prefix (and recomputes the
  cross-attention K/V), the classic slow path. With `--uncached-stride k > 1` only every
  k-th prefix length is timed and the total is estimated as k x the sum (the per-step cost grows
  with the prefix, so sampling across the whole range keeps the estimate fair); the output says so.
"""
import argparse
import resource
import time

import torch

from p2s_lib.loss import teacher_forcing, token_weights, weighted_cross_entropy
from p2s_lib.model import Pix2Seq, count_parameters

NUM_OBJECTS = 100          # 100 objects -> 5 * 100 + 1 = 501 generated tokens


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def autocast(device: str, amp: bool):
    return torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=amp)


def train_step_time(model: Pix2Seq, batch: int, image_size: int, device: str, amp: bool,
                    steps: int, warmup: int) -> float:
    """Seconds per training step (mean over `steps` after `warmup`)."""
    tok = model.tokenizer
    g = torch.Generator().manual_seed(0)
    images = torch.rand(batch, 3, image_size, image_size, generator=g).to(device)
    seq = torch.randint(tok.class_offset, tok.vocab_size, (batch, tok.max_seq_len), generator=g)
    seq[:, 0], seq[:, -1] = tok.bos_id, tok.eos_id
    inp, tgt = (t.to(device) for t in teacher_forcing(seq))
    weights = token_weights(tgt, tok)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.train()
    for i in range(warmup + steps):
        if i == warmup:
            sync(device)
            t0 = time.perf_counter()
        with autocast(device, amp):
            loss = weighted_cross_entropy(model(images, inp), tgt, weights)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    sync(device)
    return (time.perf_counter() - t0) / steps


@torch.no_grad()
def generation_time(model: Pix2Seq, image_size: int, device: str, amp: bool, cached: bool,
                    stride: int = 1) -> tuple[float, int]:
    """Seconds to greedily generate NUM_OBJECTS objects for one image -> (seconds, steps timed).
    Uncached with stride > 1: time every stride-th prefix length, return stride x their sum."""
    model.eval()
    tok = model.tokenizer
    n_steps = 5 * NUM_OBJECTS + 1
    image = torch.rand(1, 3, image_size, image_size, generator=torch.Generator().manual_seed(0)).to(device)
    with autocast(device, amp):
        model.encode(image)  # warm-up
        sync(device)
        t0 = time.perf_counter()
        memory = model.encode(image)
        if cached:
            cache = model.decoder.new_cache(memory)
            token = torch.full((1, 1), tok.bos_id, device=device)
            for _ in range(n_steps):
                token = model.decoder(token, cache=cache)[:, -1:].argmax(-1)
            sync(device)
            return time.perf_counter() - t0, n_steps
        encode_s = time.perf_counter() - t0
        # the uncached loop's tokens: any valid ids give the same cost; use a fixed random sequence
        seq = torch.randint(tok.class_offset, tok.vocab_size, (1, n_steps), device=device)
        seq[0, 0] = tok.bos_id
        total, timed = encode_s, 0
        for length in range(1, n_steps + 1, stride):
            sync(device)
            t = time.perf_counter()
            model.decoder(seq[:, :length], memory)[:, -1:].argmax(-1)
            sync(device)
            total += (time.perf_counter() - t) * stride
            timed += 1
        return total, timed


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench(name: str, batch: int, image_size: int, args, gen_stride: int) -> None:
    device, amp = args.device, args.amp
    torch.manual_seed(0)
    model = Pix2Seq.from_preset(name, num_classes=20, pretrained=False).to(device)  # timing: no weights needed
    print(f"\n== {name}: {count_parameters(model) / 1e6:.2f}M parameters, {device}"
          f"{' bf16 autocast' if amp else ''}, image {image_size} px")
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    step = train_step_time(model, batch, image_size, device, amp, args.steps, args.warmup)
    mem = (f"peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB" if device == "cuda"
           else f"peak RSS so far {peak_rss_mb():.0f} MB")
    print(f"train step (batch {batch}, {model.tokenizer.max_seq_len - 1} input tokens): {step:.3f} s/step, "
          f"{batch / step:.1f} images/s, {mem}")
    if model.tokenizer.max_objects < NUM_OBJECTS:  # e.g. nano (10 objects): room for 100
        model = Pix2Seq.from_preset(name, num_classes=20, max_objects=NUM_OBJECTS, pretrained=False).to(device)
    cached, _ = generation_time(model, image_size, device, amp, cached=True)
    uncached, timed = generation_time(model, image_size, device, amp, cached=False, stride=gen_stride)
    note = "" if gen_stride == 1 else f" (estimated from {timed} of 501 prefix lengths, every {gen_stride}th)"
    print(f"generate {NUM_OBJECTS} objects (501 tokens), 1 image: cached {cached:.2f} s "
          f"({cached / 501 * 1e3:.1f} ms/token), uncached {uncached:.2f} s{note}, "
          f"speed-up {uncached / cached:.1f}x")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--amp", action="store_true", help="bf16 autocast")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--steps", type=int, default=5, help="timed training steps")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--models", nargs="+", default=None, help="subset of: nano r50")
    p.add_argument("--uncached-stride", type=int, default=None,
                   help="time every k-th uncached prefix (default: 1 for nano/GPU, 10 for r50 on CPU)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device visible")
    print(f"torch {torch.__version__}, {args.device}, threads {torch.get_num_threads()}")
    if args.device == "cpu":
        runs = [("nano", 8, 128, args.uncached_stride or 1), ("r50", 2, 384, args.uncached_stride or 10)]
    else:
        runs = [("r50", 8, 384, args.uncached_stride or 1), ("r50", 8, 640, args.uncached_stride or 1)]
    for name, batch, size, stride in runs:
        if args.models is None or name in args.models:
            bench(name, batch, size, args, stride)


if __name__ == "__main__":
    main()
