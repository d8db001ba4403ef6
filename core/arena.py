"""The blind arena (issue 28 item 2): two variants answer one prompt as A and B in a random order, a person votes, the vote
becomes a preference pair in the workspace, and the standings say which variant people prefer.

- `new_round`: one prompt put to two variants; which variant shows as A is drawn from the round's own seed (the page keeps
  the round in its session, so a rerun shows the same order), and nothing shown before the vote names a model.
- `record_vote`: one vote into `datasets/arena-<name>/`, under a cross-process lock (two browser sessions, two app
  processes): A / B votes append to `data.jsonl` as prompt / chosen / rejected pairs (the file the Train page offers
  for DPO / ORPO / SimPO, and KTO through its unpairing), ties to `ties.jsonl`, both-bad to `both_bad.jsonl`; each
  append is flushed and fsynced; `manifest.json` (counts, models, created / updated) is rewritten temp + rename. A vote
  carries its round's id: a rerun or a double click records it once.
- `prove_variant` / `prove_round`: what shows which model answered each column: an adapter's next-token logits on the
  prompt with the adapter on differ from the same model's with it off (so the column did not answer as the base); a
  column without an adapter holds no adapter layers; a GGUF is the file llama.cpp holds; two torch columns' logits
  differ from each other.
- `judge_vote`: the "ask the judge too" switch: core.evaluate.judge reads the same pair in both orders after the
  person voted, and its verdict is recorded beside the person's; `judge_agreement` sets the two side by side.
- `standings`: per model, the win rate (a tie or both-bad counts half) with a bootstrap interval over its games
  (core.evaluate.stats) and its Bradley-Terry strength (minorisation-maximisation, Hunter 2004).
"""
from __future__ import annotations

import json
import math
import os
import random
import secrets
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Sequence

from core.data.curate import MANIFEST_FILE
from core.evaluate import judge as judging
from core.evaluate import stats
from core.generation import GENERATION_LOCK, prompt_ids
from core.llamacpp import LlamaCppModel
from core.locks import file_lock
from core.runs.card import source_run_of
from core.workspace import atomic_write_json, datasets_dir, read_json, safe_name

ARENA_PREFIX = "arena-"
MANIFEST_SCHEMA = "workbench.arena/1"
PAIRS_FILE = "data.jsonl"  # the name every workspace dataset's rows have: the Train page lists the folder
TIES_FILE = "ties.jsonl"
BOTH_BAD_FILE = "both_bad.jsonl"
LOCK_FILE = ".votes.lock"
VOTES = ("A", "B", "tie", "both_bad")
VOTE_FILES = {"A": PAIRS_FILE, "B": PAIRS_FILE, "tie": TIES_FILE, "both_bad": BOTH_BAD_FILE}
LABELS = ("A", "B")
SAME_LOGITS = 1e-6  # a largest next-token logit difference at or below this is "no difference"
BT_PRIOR = 0.1  # pseudo-wins each way between two models that met: keeps a model that never won at a finite strength


class ArenaError(ValueError):
    """A vote or round the arena cannot take; the message names the field."""


# ---------------------------------------------------------------- rounds


@dataclass(frozen=True)
class Round:
    """One prompt put to two variants. `models`: the variants' labels in the order the user picked them (variant 1,
    variant 2); which one shows as A comes from `seed`."""

    round_id: str
    seed: int
    models: tuple[str, str]
    prompt: tuple[dict, ...]  # the conversation both variants answer (system prompt, then the user's turn)

    @property
    def order(self) -> tuple[int, int]:
        """(the variant shown as A, the variant shown as B), drawn from the round's seed."""
        return (1, 0) if random.Random(self.seed).random() < 0.5 else (0, 1)

    def variant_of(self, label: str) -> int:
        if label not in LABELS:
            raise ArenaError(f"label must be A or B, got {label!r}")
        return self.order[LABELS.index(label)]

    def model_of(self, label: str) -> str:
        return self.models[self.variant_of(label)]

    def as_dict(self) -> dict:
        return {**asdict(self), "models": list(self.models), "prompt": [dict(m) for m in self.prompt]}

    @classmethod
    def from_dict(cls, data: dict) -> "Round":
        return cls(str(data["round_id"]), int(data["seed"]), tuple(data["models"]), tuple(dict(m) for m in data["prompt"]))


def round_messages(user_text: str, system_prompt: str = "") -> list[dict]:
    """The conversation of a round: the shared system prompt (when there is one) and the user's prompt."""
    if not str(user_text).strip():
        raise ArenaError("prompt: empty; type a question for both variants")
    system = [{"role": "system", "content": system_prompt}] if system_prompt.strip() else []
    return system + [{"role": "user", "content": str(user_text)}]


def new_round(prompt: Sequence[dict], models: Sequence[str], *, seed: int | None = None) -> Round:
    """A round with a fresh id and (unless given) a fresh random seed for the A / B order."""
    if len(models) != 2 or not all(str(m).strip() for m in models):
        raise ArenaError(f"models: an arena round needs two named variants, got {list(models)!r}")
    if not prompt or prompt[-1].get("role") != "user":
        raise ArenaError("prompt: the conversation must end with the user's turn")
    return Round(uuid.uuid4().hex, secrets.randbelow(2**31) if seed is None else int(seed), (str(models[0]), str(models[1])),
                 tuple(dict(m) for m in prompt))


# ---------------------------------------------------------------- the vote store


def arena_folder(name: str = "chat") -> Path:
    """datasets/arena-<name>/ in the workspace (the name made safe as one path component)."""
    return datasets_dir() / safe_name(f"{ARENA_PREFIX}{name}", default=f"{ARENA_PREFIX}chat")


def list_arenas() -> list[str]:
    """Names (without the prefix) of the arena datasets in the workspace."""
    return sorted(p.name[len(ARENA_PREFIX):] for p in datasets_dir().glob(f"{ARENA_PREFIX}*")
                  if (read_json(p / MANIFEST_FILE) or {}).get("schema") == MANIFEST_SCHEMA)


@dataclass
class VoteResult:
    row: dict
    file: Path
    duplicate: bool  # the round had been voted already: nothing was written
    manifest: dict = field(default_factory=dict)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _read_rows(path: Path) -> list[dict]:
    """The whole lines of a vote file (a torn last line, left by a writer that died mid-append, is skipped)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    rows = []
    for line in text.split("\n")[:-1]:  # split on "\n" only (an answer may hold U+2028); the last piece is "" or torn
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def _drop_torn_tail(path: Path) -> None:
    """Cut a last line that has no newline (a writer died mid-append, before its vote was acknowledged). Called under
    the lock, so no other writer is appending."""
    if not path.is_file():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        with open(path, "r+b") as handle:
            handle.truncate(data.rfind(b"\n") + 1)
            handle.flush()
            os.fsync(handle.fileno())


def _append(path: Path, row: dict) -> None:
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(row, ensure_ascii=False) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def read_votes(folder: str | Path) -> list[dict]:
    """Every vote of an arena folder: the pairs, then the ties, then the both-bad rows (each with its "vote")."""
    folder = Path(folder)
    return [row for name in (PAIRS_FILE, TIES_FILE, BOTH_BAD_FILE) for row in _read_rows(folder / name)]


def _manifest(folder: Path, rows: Sequence[dict], previous: dict) -> dict:
    counts = {"pairs": sum(r.get("vote") in ("A", "B") for r in rows), "ties": sum(r.get("vote") == "tie" for r in rows),
              "both_bad": sum(r.get("vote") == "both_bad" for r in rows)}
    models = sorted({m for r in rows for m in (r.get("model_a"), r.get("model_b")) if m})
    return {
        "schema": MANIFEST_SCHEMA, "kind": "arena", "name": folder.name[len(ARENA_PREFIX):], "created": previous.get("created") or _now(),
        "updated": _now(), "votes": len(rows), "counts": counts, "rows": counts["pairs"], "models": models,
        "files": {"pairs": PAIRS_FILE, "ties": TIES_FILE, "both_bad": BOTH_BAD_FILE},
        "data": {"file": PAIRS_FILE},
        "note": "data.jsonl holds the A / B votes as prompt / chosen / rejected pairs (DPO, ORPO, SimPO; KTO unpairs them); "
                "ties and both-bad votes are kept apart in their own files.",
    }


def pair_problem(answers: dict) -> str | None:
    """Why A / B answers cannot be a preference pair (the checks core.data.preference.check_preferences calls errors:
    an empty side, or the same text twice), or None."""
    empty = [label for label in LABELS if not str(answers.get(label) or "").strip()]
    if empty:
        return f"answer {' and '.join(empty)} is empty: a pair needs text on both sides; vote Tie or Both bad"
    if str(answers["A"]).strip() == str(answers["B"]).strip():
        return "A and B gave the same text: a pair of them teaches nothing; vote Tie or Both bad"
    return None


def vote_row(rnd: Round, answers: dict, vote: str, *, proofs: dict | None = None, judge: dict | None = None,
             time: str | None = None) -> dict:
    """The record of one vote. A / B: prompt / chosen / rejected (conversational form, core.data.preference's) with the
    model behind each; tie and both-bad: both answers. Scalar extras only (the Data page shows them as columns)."""
    if vote not in VOTES:
        raise ArenaError(f"vote must be one of {', '.join(VOTES)}, got {vote!r}")
    for label in LABELS:
        if not isinstance(answers.get(label), str):
            raise ArenaError(f"answers: the answer shown as {label} is missing")
    if vote in ("A", "B") and pair_problem(answers):
        raise ArenaError(f"vote {vote}: {pair_problem(answers)}")
    row: dict[str, Any] = {"vote_id": rnd.round_id, "vote": vote, "time": time or _now(), "prompt": [dict(m) for m in rnd.prompt]}
    if vote in ("A", "B"):
        loser = "B" if vote == "A" else "A"
        row.update(chosen=[{"role": "assistant", "content": answers[vote]}], rejected=[{"role": "assistant", "content": answers[loser]}],
                   chosen_model=rnd.model_of(vote), rejected_model=rnd.model_of(loser))
    else:
        row.update(answer_a=answers["A"], answer_b=answers["B"])
    row.update(model_a=rnd.model_of("A"), model_b=rnd.model_of("B"), seed=rnd.seed)
    for label in LABELS:
        if proofs and proofs.get(label):
            row[f"proof_{label.lower()}"] = proofs[label]["checked"]
    if proofs and proofs.get("columns"):
        row["proof_columns"] = proofs["columns"]["checked"]
    if judge:
        row.update({f"judge_{k}": v for k, v in judge.items()})
    return row


def record_vote(folder: str | Path, rnd: Round, answers: dict, vote: str, *, proofs: dict | None = None,
                judge: dict | None = None) -> VoteResult:
    """Append one vote (see vote_row) to its file in `folder`, once per round, and rewrite the manifest. Safe when
    several processes vote into the same folder at once (one lock file; appends fsynced; the manifest temp + rename)."""
    folder = Path(folder)
    row = vote_row(rnd, answers, vote, proofs=proofs, judge=judge)
    target = folder / VOTE_FILES[vote]
    folder.mkdir(parents=True, exist_ok=True)
    with file_lock(folder / LOCK_FILE):
        for name in (PAIRS_FILE, TIES_FILE, BOTH_BAD_FILE):
            _drop_torn_tail(folder / name)
        rows = read_votes(folder)
        earlier = next((r for r in rows if r.get("vote_id") == rnd.round_id), None)
        previous = read_json(folder / MANIFEST_FILE) or {}
        if earlier is not None:
            return VoteResult(earlier, folder / VOTE_FILES.get(earlier.get("vote"), PAIRS_FILE), True, previous)
        _append(target, row)
        manifest = _manifest(folder, rows + [row], previous)
        atomic_write_json(folder / MANIFEST_FILE, manifest)
    return VoteResult(row, target, False, manifest)


# ---------------------------------------------------------------- which model answered


def next_token_logits(model: Any, tokenizer: Any, messages: Sequence[dict]) -> Any:
    """The model's logits for the first answer token of `messages` (float32 on the CPU), through the one prompt rule."""
    import torch

    ids = torch.tensor([prompt_ids(list(messages), tokenizer)], device=next(model.parameters()).device)
    with GENERATION_LOCK, torch.inference_mode():
        return model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0, -1].float().cpu()


def _token(tokenizer: Any, logits: Any) -> str:
    return repr(tokenizer.decode([int(logits.argmax())]))


def _adapter_layers(model: Any) -> int:
    return sum(1 for name, _ in model.named_modules() if name.rsplit(".", 1)[-1] in ("lora_A", "lora_B", "lora_embedding_A"))


def prove_variant(loaded: Any, messages: Sequence[dict]) -> dict:
    """What shows which model answered a column: {"kind", "ok", "checked" (one sentence), "delta"}.

    adapter: the next-token logits on the prompt with the adapter on vs off (PEFT's disable_adapter) must differ;
    torch without an adapter: no adapter layers are loaded (and a merged folder names its run); GGUF: the file llama.cpp
    holds."""
    if isinstance(loaded, LlamaCppModel):
        path = Path(loaded.path)
        size = path.stat().st_size / 1e6 if path.is_file() else 0.0
        run = source_run_of(path)
        return {"kind": "gguf", "ok": path.is_file(), "delta": None,
                "checked": f"llama.cpp answered from {path.name} ({size:.1f} MB){f', exported from run {run}' if run else ''}; "
                           "no torch adapter is involved"}
    model, tokenizer, source = loaded.model, loaded.tokenizer, loaded.source
    if getattr(source, "adapter", "") and hasattr(model, "disable_adapter"):
        on = next_token_logits(model, tokenizer, messages)
        with model.disable_adapter():
            off = next_token_logits(model, tokenizer, messages)
        delta = float((on - off).abs().max())
        ok = delta > SAME_LOGITS
        verdict = (f"adapter {Path(source.adapter).name} on: next-token logits differ from the base's by up to {delta:.3g} "
                   f"(top token {_token(tokenizer, on)} on, {_token(tokenizer, off)} off)") if ok else (
                   f"adapter {Path(source.adapter).name} changes no next-token logit on this prompt: this column answered "
                   "exactly as its base model would")
        return {"kind": "adapter", "ok": ok, "delta": delta, "checked": verdict}
    layers = _adapter_layers(model)
    run = source_run_of(source.ref) if source.kind in ("local", "gguf") else None
    kind = "gguf" if source.kind == "gguf" else "merged" if run else "base"
    what = (f"{source.label} (a GGUF read into torch{f', exported from run {run}' if run else ''})" if kind == "gguf"
            else f"the merged model of run {run}" if run else source.label)
    checked = (f"{what}: no adapter layers are loaded" if not layers else f"{what}: {layers} adapter layers are loaded although no "
               "adapter was chosen")
    return {"kind": kind, "ok": not layers, "delta": None, "checked": checked}


def prove_round(loaded: dict, messages: Sequence[dict]) -> dict:
    """prove_variant for A and B, plus, for two torch models with the same vocabulary, how far their next-token logits
    on the prompt are apart ("columns"): identical logits mean the two columns are most likely the same model."""
    proofs: dict[str, Any] = {label: prove_variant(loaded[label], messages) for label in LABELS}
    a, b = loaded["A"], loaded["B"]
    if not isinstance(a, LlamaCppModel) and not isinstance(b, LlamaCppModel):
        logits_a, logits_b = next_token_logits(a.model, a.tokenizer, messages), next_token_logits(b.model, b.tokenizer, messages)
        if logits_a.shape == logits_b.shape:
            delta = float((logits_a - logits_b).abs().max())
            proofs["columns"] = {"ok": delta > SAME_LOGITS, "delta": delta, "checked": (
                f"A's and B's next-token logits differ by up to {delta:.3g}" if delta > SAME_LOGITS
                else "A and B give the same next-token logits on this prompt: most likely the same model")}
    return proofs


# ---------------------------------------------------------------- standings


def games(rows: Iterable[dict]) -> list[tuple[str, str, float]]:
    """(model, opponent, score of model) per vote between two different models: win 1, loss 0, tie or both-bad 0.5."""
    out = []
    for row in rows:
        vote = row.get("vote")
        if vote in ("A", "B") and row.get("chosen_model") and row.get("rejected_model"):
            pair = (row["chosen_model"], row["rejected_model"], 1.0)
        elif vote in ("tie", "both_bad") and row.get("model_a") and row.get("model_b"):
            pair = (row["model_a"], row["model_b"], 0.5)
        else:
            continue
        if pair[0] != pair[1]:
            out.append(pair)
    return out


def bradley_terry(results: Sequence[tuple[str, str, float]], *, prior: float = BT_PRIOR, iterations: int = 2000,
                  tolerance: float = 1e-10) -> dict[str, float]:
    """Bradley-Terry strengths p (P(i beats j) = p_i / (p_i + p_j)) by Hunter's MM iteration; a tie is half a win each
    way, and `prior` pseudo-wins each way between two models that met keep every strength finite. Scaled to a
    geometric mean of 1."""
    wins: dict[tuple[str, str], float] = {}
    models = sorted({m for a, b, _ in results for m in (a, b)})
    for a, b, score in results:
        wins[(a, b)] = wins.get((a, b), 0.0) + score
        wins[(b, a)] = wins.get((b, a), 0.0) + 1.0 - score
    for (a, b) in list(wins):
        wins[(a, b)] += prior
    strength = {m: 1.0 for m in models}
    for _ in range(iterations):
        new = {}
        for i in models:
            won = sum(w for (a, _), w in wins.items() if a == i)
            denominator = sum((wins[(i, j)] + wins[(j, i)]) / (strength[i] + strength[j]) for (a, j) in wins if a == i)
            new[i] = won / denominator if denominator else strength[i]
        scale = math.exp(sum(math.log(v) for v in new.values()) / len(new)) if new else 1.0
        new = {m: v / scale for m, v in new.items()}
        change = max((abs(new[m] - strength[m]) / strength[m] for m in models), default=0.0)
        strength = new
        if change < tolerance:
            break
    return strength


def standings(rows: Iterable[dict], *, resamples: int = stats.DEFAULT_RESAMPLES, seed: int = 0) -> list[dict]:
    """Per model, strongest first: games, wins, losses, ties (both-bad included), the win rate (a tie counts half) with
    its bootstrap interval over the model's games, and the Bradley-Terry strength. Votes of a model against itself
    (the same label on both sides) say nothing about it and are left out."""
    results = games(rows)
    strength = bradley_terry(results)
    table = []
    for model in strength:
        scores = [s for a, _, s in results if a == model] + [1.0 - s for _, b, s in results if b == model]
        interval = stats.mean_interval(scores, resamples=resamples, seed=seed)
        table.append({"model": model, "games": len(scores), "wins": sum(s == 1.0 for s in scores), "losses": sum(s == 0.0 for s in scores),
                      "ties": sum(s == 0.5 for s in scores), "win_rate": interval.value, "win_rate_low": interval.low,
                      "win_rate_high": interval.high, "strength": strength[model]})
    return sorted(table, key=lambda r: (-r["strength"], r["model"]))


def standings_rows(table: Sequence[dict]) -> list[dict]:
    """The standings as the page shows them: one row per model, percentages and the interval in words."""
    return [{"model": r["model"], "games": r["games"], "wins": r["wins"], "losses": r["losses"], "ties / both bad": r["ties"],
             "win rate": f"{r['win_rate']:.0%}", "95 % interval": f"{r['win_rate_low']:.0%} – {r['win_rate_high']:.0%}",
             "strength (Bradley-Terry)": round(r["strength"], 2)} for r in table]


def summary_line(folder: str | Path) -> str:
    """Where the votes go and how many there are, from the manifest."""
    manifest = read_json(Path(folder) / MANIFEST_FILE) or {}
    counts = manifest.get("counts") or {"pairs": 0, "ties": 0, "both_bad": 0}
    def n(count: int, word: str) -> str:
        return f"{count} {word}{'' if count == 1 else 's'}"

    return (f"Votes go to `{Path(folder)}`: {n(counts['pairs'], 'pair')} (A / B votes, in {PAIRS_FILE}: pick the folder as a "
            f"DPO / KTO dataset on the Train page); {n(counts['ties'], 'tie')} and {n(counts['both_bad'], 'both-bad vote')} kept apart.")


# ---------------------------------------------------------------- the judge beside the person


def _as_label(vote: str | None) -> str | None:
    """A vote in the judge's labels: both-bad is a tie (neither answer is preferred)."""
    return "tie" if vote == "both_bad" else vote


def judge_vote(judge_model: Any, rnd: Round, answers: dict, *, human: str | None = None) -> dict:
    """core.evaluate.judge.judge_pair on the round's pair (both orders; an inconsistent verdict is a tie) as the vote
    row's judge_* fields: its verdict in A / B / tie ("unparsed" when a reply was not A / B / tie), the model it names,
    whether it agrees with the person, and what each order said."""
    verdict = judging.judge_pair(judge_model, [dict(m) for m in rnd.prompt], answers["A"], answers["B"])
    label = getattr(judge_model, "label", None) or getattr(getattr(judge_model, "source", None), "label", "judge")
    vote = verdict.verdict or "unparsed"
    return {"vote": vote, "model": label, "winner": rnd.model_of(vote) if vote in LABELS else vote,
            "agrees": (vote == _as_label(human)) if human and verdict.parsed else None, "consistent": verdict.consistent,
            "first": verdict.first or "unparsed", "second": judging.swap(verdict.second) or "unparsed"}


def judge_line(judge: dict) -> str:
    """One sentence for the reveal: what the judge said and whether it agrees."""
    said = {"A": "A is better", "B": "B is better", "tie": "a tie"}.get(judge["vote"], "no clear verdict (a reply was not A, B or tie)")
    agrees = {True: "agrees with you", False: "disagrees with you", None: "not compared"}[judge.get("agrees")]
    return (f"Judge {judge['model']}: {said} ({agrees}); read in order A-B it said {judge['first']}, in order B-A "
            f"{judge['second']}{'' if judge.get('consistent') is not False else ' — the orders disagree, so a tie'}.")


def judge_agreement(rows: Iterable[dict]) -> dict | None:
    """core.evaluate.judge.agreement over the votes the judge read too (both-bad as a tie); None when there are none."""
    both = [{"model_a": r["model_a"], "model_b": r["model_b"], "judge": r["judge_vote"], "human": _as_label(r["vote"])}
            for r in rows if r.get("judge_vote") in judging.VERDICTS and r.get("model_a") and r.get("model_b")]
    return judging.agreement(both) if both else None
