"""Single-device training backend: one model and one AdamW on CPU, CUDA or NPU.

``train_step`` splits the rows it is given into ``ppo_minibatches`` minibatches
and takes one optimizer step per minibatch, accumulating gradients over
micro-batches of ``micro_batch_size`` rows. Every micro-batch's loss is
normalised by the token and sequence counts of its whole minibatch
(``LossInputs.num_tokens`` / ``num_sequences``), so the accumulated gradient is
the minibatch's gradient whatever the micro-batch size (a test compares them).
Each row is scored at the temperature its sample was drawn with.

With ``train.lora.rank > 0`` the policy is wrapped with peft LoRA adapters
(:mod:`.lora`): only the adapters are in the optimizer, weights for inference are
the merged ones under the base model's names, and checkpoints hold only the
adapter plus optimizer state.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from areal_env.trainers.algorithms.losses.base import LossFn
from areal_env.trainers.backends.base import (
    TrainConfig,
    gather_token_logprobs,
    make_optimizer,
    masked_entropy_sum,
    micro_batch_inputs,
    needs_proximal_logprobs,
)
from areal_env.trainers.backends.lora import (
    base_state_dict,
    merged_state_dict,
    weights_fingerprint,
    wrap_with_lora,
)
from areal_env.trainers.backends.prefix_sharing import forward_logits
from areal_env.types import EpisodeBatch, PaddedBatch


class TorchBackend:
    """Trainable model + optimizer + LR schedule on one device.

    Args:
        model: a HF causal LM, already on its device.
        config: optimisation settings.
        pad_id: token id used to pad rows.
        ref_model: optional frozen reference model for a KL penalty.

    With ``config.lora`` enabled, ``model`` is wrapped with peft in place (its
    linear layers gain adapters): read its weights through :meth:`weights_for_sync`
    or :meth:`save_weights`, not from ``model`` itself.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        config: TrainConfig,
        *,
        pad_id: int,
        ref_model: torch.nn.Module | None = None,
    ) -> None:
        self.lora = config.lora.enabled
        # peft's PeftModel when LoRA is on (its base is ``model``, adapters injected).
        self._peft: Any = wrap_with_lora(model, config.lora) if self.lora else None
        self.model: torch.nn.Module = model if self._peft is None else self._peft
        self.config = config
        self.pad_id = pad_id
        self.ref_model = ref_model
        self.device = next(model.parameters()).device
        self._fingerprints: dict[str, str] = {}
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer, self.lr_schedule = make_optimizer(trainable, config)

    def token_logprobs(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        model: torch.nn.Module | None = None,
        *,
        temperatures: torch.Tensor | float = 1.0,
        loss_mask: torch.Tensor | None = None,
        group_index: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """[B, L] logprobs of each token under ``model`` (default: the policy), no grad.

        With ``loss_mask`` and ``group_index`` (and ``share_prompt_prefix``), rows
        of a group share their prompt's forward, and only the positions the loss
        mask marks are guaranteed exact (the others are not computed).

        Args:
            input_ids: [B, L] right-padded rows.
            attention_mask: [B, L] 1 on real tokens.
            model: the model to score with; the policy when None.
            temperatures: [B] (or one float) temperature each row was sampled at.
            loss_mask: [B, L] the positions that must be exact.
            group_index: [B] rows that may share a prompt.
        """
        model = model or self.model
        temps = torch.as_tensor(temperatures, dtype=torch.float32).expand(input_ids.shape[0])
        out = torch.zeros(input_ids.shape, dtype=torch.float32)
        with torch.no_grad():
            for sl in self._micro_slices(input_ids.shape[0]):
                ids = input_ids[sl].to(self.device)
                logits = self._logits(
                    model,
                    ids,
                    attention_mask[sl],
                    None if loss_mask is None else loss_mask[sl],
                    None if group_index is None else group_index[sl],
                )
                out[sl] = gather_token_logprobs(logits, ids, temps[sl]).cpu()
        return out

    def _logits(
        self,
        model: torch.nn.Module,
        ids: torch.Tensor,
        attention_mask: torch.Tensor,
        loss_mask: torch.Tensor | None,
        group_index: torch.Tensor | None,
    ) -> torch.Tensor:
        attn = attention_mask.to(self.device)
        if not self.config.share_prompt_prefix:
            return model(input_ids=ids, attention_mask=attn).logits
        # Without loss_mask/group_index this is the plain forward too.
        return forward_logits(model, ids, attn, loss_mask, group_index, pad_id=self.pad_id)

    def train_step(self, batch: EpisodeBatch, loss_fn: LossFn, rows: list[int]) -> dict[str, float]:
        """One update over ``rows`` (indices into ``batch.row_refs()``).

        Rows are usually those with a non-zero advantage: a group whose rewards
        are all equal carries no gradient and is skipped by the caller.
        """
        if not rows:
            raise ValueError("train_step needs at least one row")
        padded = batch.padded(self.pad_id, rows=rows)
        ref = None
        if self.ref_model is not None:
            ref = self.token_logprobs(
                padded.input_ids,
                padded.attention_mask,
                self.ref_model,
                temperatures=padded.temperatures,
                loss_mask=padded.loss_mask,
                group_index=padded.group_index,
            )
        prox = None
        if needs_proximal_logprobs(loss_fn):  # decoupled PPO: the weights before any update
            prox = self.token_logprobs(
                padded.input_ids,
                padded.attention_mask,
                temperatures=padded.temperatures,
                loss_mask=padded.loss_mask,
                group_index=padded.group_index,
            )
        n_mini = min(self.config.ppo_minibatches, len(rows))
        stats: dict[str, float] = {}
        self.model.train()
        for idx in torch.arange(len(rows)).chunk(n_mini):
            step_stats = self._minibatch_step(padded, idx, ref, loss_fn, prox)
            for k, v in step_stats.items():
                stats[k] = stats.get(k, 0.0) + v / n_mini
        self.model.eval()
        stats["train/lr"] = float(self.lr_schedule.get_last_lr()[0])
        stats["train/rows"] = float(len(rows))
        return stats

    def accumulate_gradients(
        self,
        padded: PaddedBatch,
        idx: torch.Tensor,
        ref: torch.Tensor | None,
        loss_fn: LossFn,
        prox: torch.Tensor | None = None,
    ) -> dict[str, float]:
        """Backward the loss of minibatch ``idx`` micro-batch by micro-batch; its metrics.

        Gradients are added to ``.grad`` (no optimizer step): the sum over
        micro-batches is the minibatch's gradient, because every micro-batch is
        normalised by the minibatch's token and sequence counts.
        """
        mask = padded.loss_mask[idx]
        num_tokens = float(mask.sum())
        num_sequences = float((mask.sum(-1) > 0).sum())
        stats: dict[str, float] = {}
        entropy = 0.0
        for sl in self._micro_slices(len(idx)):
            part = idx[sl]
            ids = padded.input_ids[part].to(self.device)
            part_mask = padded.loss_mask[part]
            temps = padded.temperatures[part].to(self.device)
            logits = self._logits(
                self.model, ids, padded.attention_mask[part], part_mask, padded.group_index[part]
            )
            inputs = micro_batch_inputs(
                padded,
                part,
                logits,
                ref_logprobs=ref,
                num_tokens=num_tokens,
                num_sequences=num_sequences,
                device=self.device,
                proximal_logprobs=prox,
            )
            loss, metrics = loss_fn(inputs)
            loss.backward()
            entropy += masked_entropy_sum(logits, part_mask, temps)
            for k, v in metrics.items():
                stats[k] = stats.get(k, 0.0) + v
        stats["train/entropy"] = entropy / max(num_tokens, 1.0)
        return stats

    def _minibatch_step(
        self,
        padded: PaddedBatch,
        idx: torch.Tensor,
        ref: torch.Tensor | None,
        loss_fn: LossFn,
        prox: torch.Tensor | None,
    ) -> dict[str, float]:
        self.optimizer.zero_grad(set_to_none=True)
        stats = self.accumulate_gradients(padded, idx, ref, loss_fn, prox)
        stats["train/grad_norm"] = self._clip_grad()
        self.optimizer.step()
        self.lr_schedule.step()
        return stats

    def _clip_grad(self) -> float:
        params = [p for p in self.model.parameters() if p.grad is not None]
        max_norm = self.config.grad_clip if self.config.grad_clip > 0 else math.inf
        return float(torch.nn.utils.clip_grad_norm_(params, max_norm))

    def _micro_slices(self, n: int) -> list[slice]:
        step = self.config.micro_batch_size
        return [slice(i, min(i + step, n)) for i in range(0, n, step)]

    def weights_for_sync(self) -> dict[str, torch.Tensor]:
        """The policy's state dict (tensors are shared, not copied).

        With LoRA: the merged weights under the base model's names (targeted
        weights are new tensors, the rest are shared).
        """
        if self.lora:
            return merged_state_dict(self._peft)
        return {k: v.detach() for k, v in self.model.state_dict().items()}

    def save_weights(self, path: str) -> None:
        """The policy's weights as an HF folder (safetensors + config), for servers.

        With LoRA the folder is a plain model with the adapters merged in.
        """
        if self.lora:
            base = self._peft.get_base_model()
            base.save_pretrained(Path(path), state_dict=merged_state_dict(self._peft))
            return
        self._hf_model().save_pretrained(Path(path))

    def save_adapter(self, path: str) -> None:
        """Only the LoRA adapter, in peft's format, for servers that apply it themselves.

        ``adapter_config.json`` + ``adapter_model.safetensors``: what vLLM's
        ``/v1/load_lora_adapter`` reads (``inference.lora_adapters``). Pushing it
        instead of merged weights writes and loads megabytes, not the model.

        Raises:
            ValueError: the backend trains no adapter (``train.lora.rank`` is 0).
        """
        if not self.lora:
            raise ValueError("save_adapter needs LoRA training: set train.lora.rank > 0")
        self._peft.save_pretrained(Path(path))

    def save_base(self, path: str) -> None:
        """The frozen base model (no adapters merged) as an HF folder, for servers.

        Servers that apply adapters themselves need this exact base under them; it
        may differ from the folder they were launched on (a warm-started or resumed
        base), so the first adapter push of a run carries it.

        Raises:
            ValueError: the backend trains no adapter (``train.lora.rank`` is 0).
        """
        if not self.lora:
            raise ValueError("save_base needs LoRA training: set train.lora.rank > 0")
        base = self._peft.get_base_model()
        base.save_pretrained(Path(path), state_dict=base_state_dict(self._peft))

    def _hf_model(self) -> Any:
        return self.model  # a transformers PreTrainedModel (nn.Module's typing hides it)

    def _fingerprint(self, which: str = "base") -> str:
        if which not in self._fingerprints:  # base and reference are frozen: hash once
            model = self._peft if which == "base" else self.ref_model
            self._fingerprints[which] = weights_fingerprint(model)
        return self._fingerprints[which]

    def save(self, path: str) -> None:
        """Model in HF format plus optimizer and LR-schedule state.

        With LoRA only the adapter (``adapter/``: peft's adapter_model.safetensors
        and adapter_config.json) and fingerprints of the frozen base and reference
        model are written, no copy of either.
        """
        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        if self.lora:
            self._peft.save_pretrained(out / "adapter")
            (out / "base_fingerprint.txt").write_text(self._fingerprint())
        else:
            self._hf_model().save_pretrained(out / "model")
        torch.save(
            {
                "optimizer": self.optimizer.state_dict(),
                "lr_schedule": self.lr_schedule.state_dict(),
            },
            out / "optimizer.pt",
        )
        if self.ref_model is not None and self.lora:  # frozen since the run began
            (out / "ref_fingerprint.txt").write_text(self._fingerprint("ref"))
        elif self.ref_model is not None:
            torch.save(self.ref_model.state_dict(), out / "ref_model.pt")

    def load(self, path: str) -> None:
        """Restore model, optimizer, LR schedule and reference model from :meth:`save`."""
        from safetensors.torch import load_file

        src = Path(path)
        if self.lora:
            self._load_adapter(src)
        else:
            state = {}
            for f in sorted((src / "model").glob("*.safetensors")):
                state.update(load_file(f, device=str(self.device)))
            missing, unexpected = self.model.load_state_dict(state, strict=False)
            if unexpected or [m for m in missing if not m.endswith("lm_head.weight")]:
                raise ValueError(
                    f"checkpoint {src} does not match the model: {missing} {unexpected}"
                )
        opt = torch.load(src / "optimizer.pt", map_location=self.device, weights_only=True)
        self.optimizer.load_state_dict(opt["optimizer"])
        self.lr_schedule.load_state_dict(opt["lr_schedule"])
        ref_file = src / "ref_model.pt"
        if self.ref_model is not None and ref_file.exists():
            ref_state = torch.load(ref_file, map_location=self.device, weights_only=True)
            self.ref_model.load_state_dict(ref_state)

    def _load_adapter(self, src: Path) -> None:
        """Put the adapter of a LoRA checkpoint back, after checking it fits this base."""
        from peft.utils import set_peft_model_state_dict
        from safetensors.torch import load_file

        adapter = src / "adapter"
        if not (adapter / "adapter_model.safetensors").exists():
            raise ValueError(f"checkpoint {src} holds no LoRA adapter (train.lora.rank > 0)")
        for which in ("base", "ref"):
            file = src / f"{which}_fingerprint.txt"
            if which == "ref" and (self.ref_model is None or not file.exists()):
                continue
            if file.read_text().strip() != self._fingerprint(which):
                raise ValueError(
                    f"checkpoint {src}: its LoRA adapter was trained with a different {which} "
                    "model (the checkpoint stores only the adapter, so resume needs the same "
                    "frozen weights, e.g. the same warm-started model)"
                )
        state = load_file(adapter / "adapter_model.safetensors", device=str(self.device))
        result: Any = set_peft_model_state_dict(self._peft, state)
        expected = {k for k, p in self.model.named_parameters() if p.requires_grad}
        missing = [k for k in result.missing_keys if k in expected]
        if result.unexpected_keys or missing or len(state) != len(expected):
            raise ValueError(
                f"checkpoint {src}: the LoRA adapter does not match train.lora "
                f"(missing {missing}, unexpected {result.unexpected_keys})"
            )
