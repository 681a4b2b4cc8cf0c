"""TRL's GRPOTrainer on the prompts of ``benchmarks/vs_trl.py`` (run in the TRL venv).

Not meant to be run by hand: ``benchmarks/vs_trl.py`` writes the starting model, the
tasks (prompts already rendered with the model's chat template, and gold answers) and
calls this script with ``.venv-trl/bin/python``. The reward is our env's own
(``envs/math/reward.py``: the bare-number fast path, else Math-Verify), imported from
the repo (``PYTHONPATH`` = repo root), so both trainers score replies identically.

One "step" here is what one step is on our side: one generation batch of
``groups x samples`` completions, then ``minibatches`` optimizer steps on it. Written
to ``--out``: ``steps.jsonl``, one line per step with its mean reward and the time
from the start of training to the end of its last optimizer step.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from datasets import Dataset
from transformers import (
    AutoModelForCausalLM,
    PreTrainedTokenizerFast,
    TrainerCallback,
)
from trl import GRPOConfig, GRPOTrainer

from areal_env.envs.math.reward import instant_score, score_response


class StepLog(TrainerCallback):
    """Per generation batch: its mean reward and the training time at its end; a time cap."""

    def __init__(self, out: Path, minibatches: int, time_limit_s: float) -> None:
        self.file = out.open("w")
        self.minibatches = minibatches
        self.time_limit_s = time_limit_s
        self.rewards: list[float] = []  # one per reward call = one generation batch
        self.t0 = 0.0

    def score(self, completions: list, answer: list[str], **_: object) -> list[float]:
        """The reward function handed to GRPOTrainer (our env's reward, per completion)."""
        out = []
        for text, gold in zip(completions, answer, strict=True):
            if not isinstance(text, str):  # conversational form: the assistant message
                text = text[0]["content"]
            r = instant_score(text, gold)
            out.append(score_response(text, gold) if r is None else r)
        self.rewards.append(statistics.fmean(out))
        return out

    def on_train_begin(self, args, state, control, **kwargs):
        self.t0 = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step % self.minibatches == 0:
            step = state.global_step // self.minibatches
            row = {
                "step": step,
                "reward": self.rewards[step - 1],
                "t": time.perf_counter() - self.t0,
            }
            self.file.write(json.dumps(row) + "\n")
            self.file.flush()
            if row["t"] > self.time_limit_s:
                control.should_training_stop = True
        return control

    def close(self) -> None:
        self.file.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--tasks", required=True, help="JSONL of {prompt, answer}")
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, required=True)
    p.add_argument("--time-limit", type=float, default=1e9, help="stop after this, seconds")
    p.add_argument("--groups", type=int, default=32)
    p.add_argument("--samples", type=int, default=8)
    p.add_argument("--minibatches", type=int, default=2)
    p.add_argument("--lr", type=float, default=2.5e-4)
    p.add_argument("--warmup-steps", type=int, default=20)
    p.add_argument("--beta", type=float, default=0.1)
    p.add_argument("--epsilon", type=float, default=0.2)
    p.add_argument("--grad-clip", type=float, default=1.0)
    p.add_argument("--max-new-tokens", type=int, default=6)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--torch-threads", type=int, default=2)
    p.add_argument(
        "--gradient-checkpointing",
        action="store_true",
        help="TRL's default; off here, as on our side (it only costs time on a tiny model)",
    )
    args = p.parse_args()
    torch.set_num_threads(args.torch_threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    rows = [json.loads(line) for line in Path(args.tasks).read_text().splitlines()]
    dataset = Dataset.from_list(rows)
    tokenizer = PreTrainedTokenizerFast.from_pretrained(args.model)
    tokenizer.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)

    batch = args.groups * args.samples
    if batch % args.minibatches:
        raise SystemExit("groups x samples must divide into minibatches")
    config = GRPOConfig(
        output_dir=str(out / "trainer"),
        per_device_train_batch_size=batch // args.minibatches,
        gradient_accumulation_steps=1,
        steps_per_generation=args.minibatches,  # one generation batch, then N updates
        num_generations=args.samples,
        num_iterations=1,
        max_completion_length=args.max_new_tokens,
        temperature=1.0,
        top_p=1.0,
        top_k=0,
        beta=args.beta,
        epsilon=args.epsilon,
        loss_type="dapo",  # token mean over the minibatch, as ours
        scale_rewards="group",  # (r - mean) / std per group, as ours
        learning_rate=args.lr,
        lr_scheduler_type="constant_with_warmup",  # ours: linear warm-up, then constant
        warmup_steps=args.warmup_steps,
        weight_decay=0.0,
        adam_beta1=0.9,
        adam_beta2=0.999,
        max_grad_norm=args.grad_clip,
        max_steps=args.steps * args.minibatches,
        use_vllm=False,
        use_cpu=True,
        bf16=False,
        fp16=False,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        seed=args.seed,
        disable_tqdm=True,
        gradient_checkpointing=args.gradient_checkpointing,  # TRL's default is on
        dataloader_num_workers=0,
    )
    log = StepLog(out / "steps.jsonl", args.minibatches, args.time_limit)

    def math_reward(completions, answer, **kwargs):
        return log.score(completions, answer, **kwargs)

    trainer = GRPOTrainer(
        model=model,
        reward_funcs=math_reward,
        args=config,
        train_dataset=dataset,
        processing_class=tokenizer,
        callbacks=[log],
    )
    try:
        trainer.train()
    finally:
        log.close()


if __name__ == "__main__":
    main()
