"""Time of one GRPO train step with the shared-prompt forward against the plain forward.

Both sides train copies of the same model on the same batch: ``--groups`` groups
of ``--samples`` rows, each group one prompt (chat-formatted, like the default
run's) and each row its own random answer, with a k3 KL term to a frozen
reference model (so the reference forward is timed too). The only difference
is ``train.share_prompt_prefix``. Each side runs ``--warmup`` steps untimed,
then ``--steps`` timed; the ratio plain / shared is the figure to compare.

Usage::

    python benchmarks/train_step.py
    python benchmarks/train_step.py --groups 16 --samples 16 --answer-tokens 32
"""

from __future__ import annotations

import argparse
import copy
import platform
import random
import tempfile
import time

import torch

from areal_env.models.tiny import build_tiny_model, load_model_and_tokenizer
from areal_env.trainers.algorithms.advantages import compute_advantages
from areal_env.trainers.algorithms.presets import resolve_preset
from areal_env.trainers.backends.base import TrainConfig
from areal_env.trainers.backends.torch_single import TorchBackend
from areal_env.types import EpisodeBatch, GenerationResult, Sample, SamplingParams, Trajectory


def make_batch(tokenizer, groups: int, samples: int, answer_tokens: int, seed: int) -> EpisodeBatch:
    rng = random.Random(seed)
    vocab = [i for i in range(len(tokenizer)) if i not in tokenizer.all_special_ids]
    out = []
    for g in range(groups):
        question = f"{rng.randint(0, 99)}+{rng.randint(0, 99)}="
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": question}], add_generation_prompt=True, tokenize=False
        )
        prompt = tokenizer(text, add_special_tokens=False)["input_ids"]
        group = []
        for _ in range(samples):
            n = rng.randint(1, answer_tokens)
            sample = Sample()
            sample.append_prompt(prompt)
            sample.append_generation(
                GenerationResult(
                    request_id=f"{g}",
                    input_ids=tuple(prompt),
                    output_ids=[rng.choice(vocab) for _ in range(n)],
                    output_logprobs=[-2.0] * n,
                    output_versions=[0] * n,
                    finish_reason="stop",
                ),
                SamplingParams(temperature=1.0),
            )
            group.append(Trajectory(samples=[sample], reward=float(rng.random() < 0.4)))
        out.append(group)
    return compute_advantages(EpisodeBatch(groups=out), "group_mean_std")


def time_side(model, tokenizer, batch: EpisodeBatch, share: bool, args) -> float:
    backend = TorchBackend(
        copy.deepcopy(model),
        TrainConfig(lr=1e-4, share_prompt_prefix=share),
        pad_id=tokenizer.pad_token_id,
        ref_model=copy.deepcopy(model).eval().requires_grad_(False),
    )
    loss_fn = resolve_preset("grpo", kl_coef=0.1).loss_fn(max_len=args.answer_tokens)
    rows = list(range(len(batch)))
    for _ in range(args.warmup):
        backend.train_step(batch, loss_fn, rows)
    start = time.perf_counter()
    for _ in range(args.steps):
        backend.train_step(batch, loss_fn, rows)
    return (time.perf_counter() - start) / args.steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-path", default=None, help="HF folder (default: tiny model)")
    parser.add_argument("--groups", type=int, default=32)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--answer-tokens", type=int, default=6)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args()
    path = args.model_path or build_tiny_model(tempfile.mkdtemp())
    model, tokenizer = load_model_and_tokenizer(path)
    batch = make_batch(tokenizer, args.groups, args.samples, args.answer_tokens, seed=0)
    plain = time_side(model, tokenizer, batch, share=False, args=args)
    shared = time_side(model, tokenizer, batch, share=True, args=args)
    rows = len(batch)
    threads = torch.get_num_threads()
    print(f"machine: {platform.machine()}, torch {torch.__version__}, {threads} threads")
    print(f"batch: {args.groups} groups x {args.samples} rows, answers <= {args.answer_tokens}")
    print(f"plain forward : {plain * 1000:7.1f} ms/step ({rows / plain:7.0f} rows/s)")
    print(f"shared prompt : {shared * 1000:7.1f} ms/step ({rows / shared:7.0f} rows/s)")
    print(f"ratio plain/shared: {plain / shared:.2f}x")


if __name__ == "__main__":
    main()
