"""Training data: load, encode with `core.data.masking`, split, pack, and collate — labels untouched.

The trainer receives exactly the `input_ids` / `labels` that `encode_conversation` returns (the ones the
Template page draws). Nothing downstream re-tokenizes or re-masks: the dataset is handed to TRL already
tokenized with `skip_prepare_dataset`, and our collator only pads (ids with the pad token, labels with -100).
"""
from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from core.data.formats import DatasetLoadError, load_dataset_file, resolve_data_path
from core.data.lint import LintReport, lint_dataset
from core.data.masking import (
    IGNORE_INDEX,
    EncodedRow,
    MaskingError,
    encode_conversation,
    encode_conversations,
    encode_text,
    inference_prompt_ids,
    pack_bins,
)
from core.data.preference import check_preferences, encode_pair, load_preference_file
from core.data.replay import SHIPPED, ReplayError, mix, needs_answers
from core.data.summary import inference_format
from core.data.templates import chat_template_text, load_template, propose_template
from core.train.methods import objective_info
from core.train.spec import TrainSpec

LINT_SAMPLE = 2000


class DataError(ValueError):
    """The training data cannot be used; the message names the file and why."""


@dataclass
class EncodedSplit:
    features: list[dict]  # {"input_ids", "labels"} per row (or per packed sequence, + "position_ids")
    n_rows: int  # rows read for this split
    n_failed: int = 0  # rows the chat template could not encode
    n_zero_trained: int = 0  # rows left without a trained token (dropped)
    n_truncated: int = 0
    tokens: int = 0  # tokens of the kept rows
    trained_tokens: int = 0  # of those, tokens with a label

    @property
    def n_kept(self) -> int:
        return self.n_rows - self.n_failed - self.n_zero_trained

    longest_tokens: int = 0  # preference rows (conversational, no input_ids): the longest prompt + answer, counted by encode_pair

    @property
    def longest(self) -> int:
        """Tokens in the longest training sequence: the widest a padded batch gets (memory follows it)."""
        return max((len(f["input_ids"]) for f in self.features if "input_ids" in f), default=self.longest_tokens)


@dataclass
class PreparedData:
    train: EncodedSplit
    eval: EncodedSplit | None
    lint: LintReport
    source: str
    detected_format: str
    source_sha256: str
    manifest_sha256: str | None
    n_invalid_rows: int  # rows the loader rejected (bad JSON, missing fields, ...)
    chat_template: str | None
    notes: list[str] = field(default_factory=list)
    template_choice: dict = field(default_factory=dict)  # {name, source: spec | tokenizer | proposed, reason}
    replay: dict | None = None  # core.data.replay's record of the general rows mixed in, when replay is on
    inference: dict = field(default_factory=dict)  # core.data.summary.inference_format: system prompt, template, reasoning

    def manifest(self) -> dict:
        """What the run card records about the data."""
        return {
            "source": self.source,
            "format": self.detected_format,
            "sha256": self.source_sha256,
            "manifest_sha256": self.manifest_sha256,
            "invalid_rows": self.n_invalid_rows,
            "train_rows": self.train.n_kept,
            "eval_rows": self.eval.n_kept if self.eval else 0,
            "dropped_zero_trained": self.train.n_zero_trained,
            "failed_to_encode": self.train.n_failed,
            "truncated_rows": self.train.n_truncated,
            "train_tokens": self.train.tokens,
            "trained_tokens": self.train.trained_tokens,
            "replay": self.replay,
        }


# ---------------------------------------------------------------- loading


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def data_file(text: str) -> Path:
    """The file a dataset field points to (a workspace dataset folder means its data.jsonl)."""
    path = resolve_data_path(text)
    if path.is_dir() and (path / "data.jsonl").is_file():
        return path / "data.jsonl"
    return path


def manifest_sha256(path: Path) -> str | None:
    """Hash of the curated dataset's manifest.json when the data comes from a workspace dataset folder."""
    manifest = path.parent / "manifest.json"
    return file_sha256(manifest) if manifest.is_file() else None


def load_rows(text: str) -> Any:
    path = data_file(text)
    try:
        loaded = load_dataset_file(path)
    except (DatasetLoadError, ValueError, OSError) as exc:
        raise DataError(f"dataset {text}: {exc}") from exc
    if not loaded.rows:
        raise DataError(f"dataset {text}: no valid rows ({loaded.report.summary()})")
    return loaded


def choose_chat_template(name: str, tokenizer: Any) -> tuple[str | None, dict]:
    """(template text or None for the tokenizer's own, what was chosen and why). A tokenizer without a template
    (a base model) gets the shipped template its special tokens point to, instead of failing to encode."""
    try:
        text = chat_template_text(name)
    except ValueError as exc:
        raise DataError(str(exc)) from None
    own = getattr(tokenizer, "chat_template", None)
    proposal = None if own else propose_template(tokenizer)
    if text is not None:
        return text, proposal.as_dict() if proposal and proposal.name == name else {"name": name, "source": "spec"}
    if own:
        return None, {"name": "", "source": "tokenizer"}
    return load_template(proposal.name), proposal.as_dict()


# ---------------------------------------------------------------- encoding


def encode_rows(rows: Sequence[dict], tokenizer: Any, spec: TrainSpec, chat_template: str | None) -> list[EncodedRow | None]:
    """Every row through the masking module (the same call the Template page and the lint make)."""
    encoded: list[EncodedRow | None] = [None] * len(rows)
    chat = [(i, r) for i, r in enumerate(rows) if "messages" in r]
    if chat:
        results = encode_conversations(
            [r["messages"] for _, r in chat], tokenizer, chat_template=chat_template, policy=spec.masking_policy,
            max_length=spec.max_length, train_eot=spec.train_eot, errors="skip", tools=[r.get("tools") for _, r in chat],
            reasoning=spec.reasoning,
        )
        for (i, _), row in zip(chat, results):
            encoded[i] = row
    for i, r in enumerate(rows):
        if "text" in r and "messages" not in r:
            encoded[i] = encode_text(r["text"], tokenizer, max_length=spec.max_length)
    return encoded


def build_split(rows: Sequence[dict], tokenizer: Any, spec: TrainSpec, chat_template: str | None, *, pack: bool) -> EncodedSplit:
    split = EncodedSplit(features=[], n_rows=len(rows))
    for row in encode_rows(rows, tokenizer, spec, chat_template):
        if row is None:
            split.n_failed += 1
            continue
        if row.n_trained == 0:
            split.n_zero_trained += 1
            continue
        _keep(split, row)
    if pack and split.features:
        split.features = pack_features(split.features, spec.max_length)
    return split


def _keep(split: EncodedSplit, row: EncodedRow) -> None:
    split.n_truncated += int(row.truncated)
    split.tokens += row.n_tokens
    split.trained_tokens += row.n_trained
    split.features.append({"input_ids": list(row.input_ids), "labels": list(row.labels)})


def add_replay(split: EncodedSplit, tokenizer: Any, spec: TrainSpec, chat_template: str | None, estimate: bool = False) -> dict:
    """Mix `spec.replay_fraction` general rows into an encoded training split (core.data.replay); returns the record.

    'general' replays the base model's own answers (core.data.replay.resolve_source). estimate=True (the pre-flight,
    before the job has generated them): counted on the shipped set, and the record says so."""
    model = spec.replay_model_source
    pending = needs_answers(spec.replay_dataset, model)
    if pending and estimate:
        model = None  # the shipped rows stand in for counting only; the job answers with the base first

    def encode(row: dict) -> EncodedRow | None:
        encoded = encode_rows([row], tokenizer, spec, chat_template)[0]
        return encoded if encoded is not None and encoded.n_trained else None

    try:
        rows, record = mix(len(split.features), spec.replay_fraction, spec.replay_dataset, spec.seed, encode, model=model)
    except ReplayError as exc:
        raise DataError(str(exc)) from exc
    if pending and estimate and spec.replay_dataset.strip() == SHIPPED:
        record.update(estimate=True, answered_by=spec.replay_model_source.label,
                      label=f"general instructions to be answered by {spec.replay_model_source.label} as the run's first stage "
                            "(counted here on the shipped set)")
    for row in rows:
        _keep(split, row)
    split.n_rows += len(rows)
    return record


def held_out(rows: Sequence[dict], fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """A seeded split: (train rows, eval rows). Keeps at least one training row."""
    if fraction <= 0 or len(rows) < 2:
        return list(rows), []
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    n_eval = min(len(rows) - 1, max(1, round(len(rows) * fraction)))
    eval_ids = set(order[:n_eval])
    return [r for i, r in enumerate(rows) if i not in eval_ids], [r for i, r in enumerate(rows) if i in eval_ids]


def prepare_data(spec: TrainSpec, tokenizer: Any, replay_estimate: bool = False) -> PreparedData:
    """Load, lint, split and encode. Raises DataError when nothing could be trained. replay_estimate: see add_replay."""
    if spec.objective == "grpo":
        return prepare_prompt_data(spec, tokenizer)
    if spec.objective != "sft":
        return prepare_preference_data(spec, tokenizer)
    loaded = load_rows(spec.dataset)
    template, template_choice = choose_chat_template(spec.chat_template, tokenizer)
    if spec.eval_dataset.strip():
        train_rows, eval_rows = loaded.rows, load_rows(spec.eval_dataset).rows
    else:
        train_rows, eval_rows = held_out(loaded.rows, spec.eval_fraction, spec.seed)
    lint = lint_dataset(train_rows, tokenizer, chat_template=template, policy=spec.masking_policy,
                        max_length=spec.max_length, train_eot=spec.train_eot, sample=LINT_SAMPLE, check_inference=False,
                        reasoning=spec.reasoning)
    refusal = lint.refusal()
    if refusal:
        raise DataError(f"Refusing to train on {spec.dataset}: {refusal}{_zero_reason(lint)}.")
    train = build_split(train_rows, tokenizer, spec, template, pack=False)
    if not train.features:
        raise DataError(
            f"Refusing to train on {spec.dataset}: none of its {train.n_rows} training rows keeps a trained token "
            f"({train.n_zero_trained} have none under masking policy {spec.masking_policy!r} at max_length {spec.max_length}, "
            f"{train.n_failed} could not be encoded)."
        )
    replay = add_replay(train, tokenizer, spec, template, replay_estimate) if spec.replay_fraction > 0 else None
    if spec.packing:
        train.features = pack_features(train.features, spec.max_length)
    evaluation = build_split(eval_rows, tokenizer, spec, template, pack=False) if eval_rows else None
    path = data_file(spec.dataset)
    notes = []
    if template_choice["source"] == "proposed":
        notes.append(f"chat template {template_choice['name']} proposed: {template_choice['reason']}")
    if replay:
        notes.append(f"replay: {replay['replay_rows']} general rows from {replay['label']} mixed into {replay['task_rows']} task rows "
                     f"({replay['fraction']:.1%} of the training rows)")
    if train.n_zero_trained:
        notes.append(f"{train.n_zero_trained} of {train.n_rows} rows had no trained token and were left out")
    if train.n_failed:
        notes.append(f"{train.n_failed} rows could not be rendered with the chat template and were left out")
    if train.n_truncated:
        notes.append(f"{train.n_truncated} rows were cut to max_length {spec.max_length}")
    return _prepared(path, loaded, train, evaluation, lint, template, template_choice, notes, replay, reasoning=spec.reasoning)


# ---------------------------------------------------------------- preference objectives (issue 27)


def unpair(rows: Sequence[dict]) -> list[dict]:
    """Pairs as KTO rows: each pair gives its chosen answer as desirable and its rejected answer as undesirable."""
    out = []
    for row in rows:
        if "completion" in row:
            out.append(row)
        else:
            out += [{"prompt": row["prompt"], "completion": row["chosen"], "label": True},
                    {"prompt": row["prompt"], "completion": row["rejected"], "label": False}]
    return out


def _trl_row(row: dict) -> dict:
    """The columns TRL's preference trainers read (the source's other columns stay out of its tokenisation)."""
    keys = ("prompt", "completion", "label") if "completion" in row else ("prompt", "chosen", "rejected")
    return {k: row[k] for k in keys}


def preference_split(rows: Sequence[dict], tokenizer: Any, spec: TrainSpec, chat_template: str | None) -> EncodedSplit:
    """Conversational rows for TRL, counted through the one masking function (encode_pair / encode_conversation):
    tokens, trained (answer) tokens, rows cut at max_length, rows the template cannot render (left out)."""
    split = EncodedSplit(features=[], n_rows=len(rows))
    for row in rows:
        try:
            if "completion" in row:
                sides = [encode_conversation(list(row["prompt"]) + list(row["completion"]), tokenizer, chat_template=chat_template,
                                             policy="last_assistant", max_length=spec.max_length, train_eot=spec.train_eot)]
            else:
                pair = encode_pair(row, tokenizer, chat_template=chat_template, max_length=spec.max_length, train_eot=spec.train_eot)
                sides = [pair.chosen, pair.rejected]
        except MaskingError:  # the template cannot render the row (as encode_conversations' errors="skip")
            split.n_failed += 1
            continue
        if any(side.n_trained == 0 for side in sides):
            split.n_zero_trained += 1
            continue
        split.n_truncated += int(any(side.truncated for side in sides))
        split.tokens += sum(side.n_tokens for side in sides)
        split.trained_tokens += sum(side.n_trained for side in sides)
        split.longest_tokens = max([split.longest_tokens] + [side.n_tokens for side in sides])
        split.features.append(_trl_row(row))
    return split


def prepare_preference_data(spec: TrainSpec, tokenizer: Any) -> PreparedData:
    """Load a preference file (core.data.preference), check it, split it and count it; rows stay conversational (TRL
    tokenises them: see core.train.trainer.build_preference_trainer). Raises DataError naming the file and rows."""
    info = objective_info(spec.objective)
    path = data_file(spec.dataset)

    def load(text: str) -> Any:
        try:
            loaded = load_preference_file(data_file(text))
        except (DatasetLoadError, ValueError, OSError) as exc:
            raise DataError(f"dataset {text}: {exc}") from exc
        if not loaded.rows:
            raise DataError(f"dataset {text}: no valid preference rows ({loaded.report.summary()})")
        if loaded.detected_format == "unpaired" and info.data == "pairs":
            raise DataError(f"dataset {text}: objective {spec.objective} needs chosen / rejected pairs; these are unpaired "
                            "prompt / completion / label rows (only objective kto trains on them)")
        return loaded

    loaded = load(spec.dataset)
    errors = [sentence for level, sentence in check_preferences(loaded.rows).findings() if level == "error"]
    if errors:
        raise DataError(f"Refusing to train {spec.objective} on {spec.dataset}: " + "; ".join(errors) + ".")
    template, template_choice = choose_chat_template(spec.chat_template, tokenizer)
    if spec.eval_dataset.strip():
        train_rows, eval_rows = loaded.rows, load(spec.eval_dataset).rows
    else:
        train_rows, eval_rows = held_out(loaded.rows, spec.eval_fraction, spec.seed)
    notes = []
    if info.data == "pairs_or_unpaired" and any("chosen" in r for r in train_rows):
        notes.append(f"kto: {sum('chosen' in r for r in train_rows)} pairs split into desirable (chosen) and undesirable (rejected) rows")
        train_rows, eval_rows = unpair(train_rows), unpair(eval_rows)
    train = preference_split(train_rows, tokenizer, spec, template)
    if not train.features:
        raise DataError(f"Refusing to train on {spec.dataset}: none of its {train.n_rows} preference rows could be rendered with a "
                        f"trained answer ({train.n_failed} failed to render, {train.n_zero_trained} lost their answer at max_length "
                        f"{spec.max_length}).")
    evaluation = preference_split(eval_rows, tokenizer, spec, template) if eval_rows else None
    if template_choice["source"] == "proposed":
        notes.append(f"chat template {template_choice['name']} proposed: {template_choice['reason']}")
    if train.n_failed:
        notes.append(f"{train.n_failed} rows could not be rendered with the chat template and were left out")
    if train.n_zero_trained:
        notes.append(f"{train.n_zero_trained} rows kept no answer token at max_length {spec.max_length} and were left out")
    if train.n_truncated:
        notes.append(f"{train.n_truncated} rows are longer than max_length {spec.max_length} (TRL cuts them)")
    lint = LintReport(n_rows=len(train_rows), n_checked=len(train_rows), policy="last_assistant", max_length=spec.max_length,
                      n_encoded=len(train.features), total_tokens=train.tokens, trained_tokens=train.trained_tokens)
    return _prepared(path, loaded, train, evaluation, lint, template, template_choice, notes, reasoning=spec.reasoning)


# ---------------------------------------------------------------- GRPO: prompts and their reference answers (issue 28 item 4)

PROMPT_EXTRA_TYPES = (str, int, float, bool)


def prompt_row(row: dict, where: str) -> dict:
    """A GRPO row from a loaded row: the prompt is every turn before the last, the reference (what the rewards compare
    with) is the last turn, which must be the assistant's. Scalar extra columns ride along (a reward may name one as its
    reference_field). DataError names the row."""
    messages = row.get("messages")
    if not isinstance(messages, list) or not messages:
        raise DataError(f"{where}: GRPO needs conversations (messages, or prompt / completion rows); this row is plain text")
    if messages[-1].get("role") != "assistant":
        raise DataError(f"{where}: the last turn is {messages[-1].get('role')!r}, not the assistant's answer, so it has no reference "
                        "for the rewards")
    prompt = [{"role": m["role"], "content": m.get("content") or ""} for m in messages[:-1]]
    if not any(m["role"] == "user" for m in prompt):
        raise DataError(f"{where}: no user turn before the assistant's answer: there is no prompt to sample completions for")
    extras = {k: v for k, v in row.items() if k not in ("messages", "text", "tools", "prompt", "reference")
              and isinstance(v, PROMPT_EXTRA_TYPES)}
    return {"prompt": prompt, "reference": str(messages[-1].get("content") or ""), **extras}


def prompt_split(rows: Sequence[dict], tokenizer: Any, spec: TrainSpec, chat_template: str | None, source: str) -> EncodedSplit:
    """The prompts as TRL GRPOTrainer reads them ({prompt: messages, reference}), each counted through the masking module's
    inference_prompt_ids (the ids the model is prompted with); a prompt that leaves no room for max_completion_length
    within max_length is left out (counted as truncated)."""
    split = EncodedSplit(features=[], n_rows=len(rows))
    room = spec.max_length - spec.max_completion_length
    for n, row in enumerate(rows):
        item = prompt_row(row, f"{source} row {n + 1}")
        try:
            length = len(inference_prompt_ids(item["prompt"], tokenizer, chat_template=chat_template, reasoning=spec.reasoning))
        except MaskingError:
            split.n_failed += 1
            continue
        if length > room:
            split.n_truncated += 1
            continue
        split.tokens += length
        split.longest_tokens = max(split.longest_tokens, length + spec.max_completion_length)
        split.features.append(item)
    return split


def prepare_prompt_data(spec: TrainSpec, tokenizer: Any) -> PreparedData:
    """GRPO's data: conversations whose last turn is the assistant's answer (prompt = the turns before it, reference = the
    answer), split like SFT rows (the held-out prompts stay out of training: bench/grpo_demo.py scores them). No eval split is
    handed to the trainer: GRPO's loss on held-out prompts means nothing; the rewards are the measure."""
    loaded = load_rows(spec.dataset)
    template, template_choice = choose_chat_template(spec.chat_template, tokenizer)
    if spec.eval_dataset.strip():
        train_rows = loaded.rows
    else:
        train_rows, _ = held_out(loaded.rows, spec.eval_fraction, spec.seed)
    train = prompt_split(train_rows, tokenizer, spec, template, spec.dataset)
    if not train.features:
        raise DataError(f"Refusing to train grpo on {spec.dataset}: none of its {train.n_rows} prompts fits ({train.n_truncated} leave no "
                        f"room for max_completion_length {spec.max_completion_length} within max_length {spec.max_length}, "
                        f"{train.n_failed} could not be rendered with the chat template)")
    notes = [f"grpo: {len(train.features)} prompts, {spec.num_generations} completions sampled for each"]
    if template_choice["source"] == "proposed":
        notes.append(f"chat template {template_choice['name']} proposed: {template_choice['reason']}")
    if train.n_truncated:
        notes.append(f"{train.n_truncated} prompts leave no room for max_completion_length {spec.max_completion_length} within "
                     f"max_length {spec.max_length} and were left out")
    if train.n_failed:
        notes.append(f"{train.n_failed} prompts could not be rendered with the chat template and were left out")
    lint = LintReport(n_rows=len(train_rows), n_checked=len(train_rows), policy="last_assistant", max_length=spec.max_length,
                      n_encoded=len(train.features), total_tokens=train.tokens, trained_tokens=train.tokens)
    return _prepared(data_file(spec.dataset), loaded, train, None, lint, template, template_choice, notes, reasoning=spec.reasoning)


def _prepared(path: Path, loaded: Any, train: EncodedSplit, evaluation: EncodedSplit | None, lint: LintReport, template: str | None,
              template_choice: dict, notes: list[str], replay: dict | None = None, *, reasoning: str = "train") -> PreparedData:
    """The prepared data of either objective family, with the source's identity (file hashes, or the loader's)."""
    return PreparedData(
        train=train,
        eval=evaluation if evaluation and evaluation.features else None,
        lint=lint,
        source=str(path),
        detected_format=loaded.detected_format,
        source_sha256=file_sha256(path) if path.is_file() else loaded.source_hash,
        manifest_sha256=manifest_sha256(path) if path.is_file() else None,
        n_invalid_rows=loaded.report.n_invalid,
        chat_template=template,
        notes=notes,
        template_choice=template_choice,
        replay=replay,
        inference=inference_format(loaded.rows, template_choice, reasoning),
    )


def _zero_reason(lint: LintReport) -> str:
    if lint.count("encode_failed") == lint.n_checked and lint.n_checked:
        return ""
    truncated = lint.count("over_max_length")
    if truncated:
        return f" ({truncated} rows are longer than max_length {lint.max_length}: the cut removes every trained token — raise max_length)"
    if lint.policy != "everything":
        return " (try masking policy 'everything' or check the assistant turns in the Template page)"
    return ""


# ---------------------------------------------------------------- packing and collation


def pack_features(features: list[dict], max_length: int) -> list[dict]:
    """Best-fit decreasing into sequences of at most max_length tokens (core.data.masking.pack_bins).

    Each packed sequence carries `position_ids` that restart at 0 for every row, which is how transformers
    knows to keep rows from attending to each other (its packed-sequence mask), and `seq_lengths`, the length
    of each row in it, which Unsloth needs for the same separation (see PadCollator); the first label of every
    row is masked so no row learns to predict the start of the next one.
    """
    packed = []
    for members in pack_bins([len(f["input_ids"]) for f in features], max_length):
        ids, labels, positions, lengths = [], [], [], []
        for i in members:
            row_ids, row_labels = features[i]["input_ids"], list(features[i]["labels"])
            row_labels[0] = IGNORE_INDEX
            ids += row_ids
            labels += row_labels
            positions += list(range(len(row_ids)))
            lengths.append(len(row_ids))
        packed.append({"input_ids": ids, "labels": labels, "position_ids": positions, "seq_lengths": lengths})
    return packed


@dataclass
class PadCollator:
    """Right-pads a batch: ids with the pad token, labels with -100. Packed rows keep their position_ids and
    get no attention mask (transformers then builds the per-row causal mask from the position ids).

    `flatten_packed` is the form Unsloth keeps packed rows apart with (its padding-free path, as in
    unsloth/utils/packing.py): the whole batch becomes one row of all its tokens, no padding, with
    `packed_seq_lengths` (int32, one entry per original row, summing to the row's width) from which its
    attention builds the block-diagonal mask / varlen boundaries. Without that tensor Unsloth's attention is
    plain causal over the whole sequence and packed rows would attend to each other."""

    pad_token_id: int
    flatten_packed: bool = False

    def __call__(self, examples: list[dict]) -> dict:
        import torch

        if self.flatten_packed and "position_ids" in examples[0]:
            return self._flattened(examples)
        width = max(len(e["input_ids"]) for e in examples)

        def padded(key: str, value: int) -> "torch.Tensor":
            return torch.tensor([list(e[key]) + [value] * (width - len(e[key])) for e in examples], dtype=torch.long)

        batch = {"input_ids": padded("input_ids", self.pad_token_id), "labels": padded("labels", IGNORE_INDEX)}
        if "position_ids" in examples[0]:
            batch["position_ids"] = padded("position_ids", 0)
        else:
            batch["attention_mask"] = torch.tensor([[1] * len(e["input_ids"]) + [0] * (width - len(e["input_ids"])) for e in examples],
                                                   dtype=torch.long)
        return batch

    @staticmethod
    def _flattened(examples: list[dict]) -> dict:
        import torch

        def joined(key: str) -> "torch.Tensor":
            return torch.tensor([[v for e in examples for v in e[key]]], dtype=torch.long)

        lengths = [n for e in examples for n in e["seq_lengths"]]
        batch = {"input_ids": joined("input_ids"), "labels": joined("labels"), "position_ids": joined("position_ids"),
                 "packed_seq_lengths": torch.tensor(lengths, dtype=torch.int32)}
        batch["labels"][batch["position_ids"] == 0] = IGNORE_INDEX  # no row learns the first token of the next
        return batch


def to_hf_dataset(features: list[dict]) -> Any:
    from datasets import Dataset

    columns = {key: [f[key] for f in features] for key in features[0]}
    return Dataset.from_dict(columns)
