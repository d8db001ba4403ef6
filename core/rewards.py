"""Named rewards: one scoring vocabulary for Evaluate, the judge and GRPO (issue 28, item 1).

A reward scores one completion against its reference row (the dataset row it answers) and returns a float in
its documented range ([0, 1] for every built-in one). `REWARDS` is the table: name -> `Reward` (title, a one-line
explanation, its parameters with defaults and limits), so the Rewards page and any form are generated from it.
The string work is never done twice: json_valid / field_match / field_accuracy / exact_match / contains_answer /
rouge_l delegate to `core.scorers`, the single implementation the forgetting report uses.

    scorer = make_scorer("field_match", {"field": "urgency"})
    scorer.score('{"urgency": "high"}', {"reference": '{"urgency": "high"}'})      # -> 1.0
    scorer.score_batch(completions, rows)  # -> [RewardResult(value, error)], one per row, never raises per row

`combine([(name, params, weight), ...])` is one scorer returning the weighted sum and its parts (GRPO logs each
part); `RewardSpec` is the same list as data (from_dict / to_dict) for a TrainSpec / EvaluateSpec to carry, and
`trl_reward_functions(spec)` turns it into TRL GRPOTrainer's reward_funcs + reward_weights (no TRL import here).

Two rewards run code that is not ours and are guarded:
- `regex`: the pattern is compiled once (a bad one is refused naming it); the text is capped in length and the
  match is time-limited (the `regex` module's timeout; without that module, the match runs in the sandbox below).
- `python`: the user's `def reward(completion: str, row: dict) -> float` runs in a separate process
  (`python -I`, minimal environment, its own session, RLIMIT_AS where the OS has it) with a wall-time limit per
  batch, and only when the caller passes allow_user_code=True. A timeout, an exception or a non-number is a
  per-row error; values are checked to be finite floats.
"""
from __future__ import annotations

import ast
import json
import math
import os
import re
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

from core import scorers

try:  # the third-party `regex` module (a transformers dependency) has a per-call match timeout
    import regex as _regex_module
except ImportError:  # pragma: no cover - exercised by forcing the sandbox path in the tests
    _regex_module = None

REFERENCE_KEYS = ("reference", "answer", "solution", "ground_truth", "completion", "output", "response")
ROW_FN = Callable[[str, dict], float]


class RewardError(ValueError):
    """A per-row scoring error (bad reference row, timeout, user-code exception, non-number...)."""


@dataclass(frozen=True)
class RewardParam:
    name: str
    label: str
    help: str
    default: Any
    kind: str = "float"  # "float" | "int" | "bool" | "str" | "code" | "choice"
    min: float | None = None
    max: float | None = None
    choices: tuple[str, ...] = ()


@dataclass(frozen=True)
class Reward:
    name: str
    title: str
    explanation: str
    params: tuple[RewardParam, ...]
    make: Callable[[dict, dict], Any]  # (checked params, context) -> ROW_FN, or a scorer with score_batch
    low: float = 0.0
    high: float = 1.0
    runs_user_code: bool = False

    def param(self, name: str) -> RewardParam:
        for p in self.params:
            if p.name == name:
                return p
        raise KeyError(f"reward {self.name!r} has no parameter {name!r}")

    def defaults(self) -> dict:
        return {p.name: p.default for p in self.params}

    def check_params(self, params: Mapping[str, Any] | None, where: str = "params") -> dict:
        """The parameters with defaults filled in; unknown names, wrong types and values out of limits are refused
        with a message naming the reward and the parameter."""
        params = dict(params or {})
        unknown = sorted(set(params) - {p.name for p in self.params})
        if unknown:
            known = ", ".join(p.name for p in self.params) or "none"
            raise ValueError(f"{where}: reward {self.name!r} has no parameter {unknown[0]!r} (its parameters: {known})")
        checked = {}
        for p in self.params:
            checked[p.name] = _check_value(self.name, p, params.get(p.name, p.default), where)
        return checked


def _check_value(reward: str, p: RewardParam, value: Any, where: str) -> Any:
    name = f"{where}.{p.name} (reward {reward!r})"
    if p.kind == "bool":
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be true or false, got {value!r}")
        return value
    if p.kind in ("str", "code", "choice"):
        if not isinstance(value, str):
            raise ValueError(f"{name} must be text, got {type(value).__name__} {value!r}")
        if p.kind == "choice" and value not in p.choices:
            raise ValueError(f"{name} must be one of {', '.join(p.choices)}, got {value!r}")
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if p.kind == "int":
        if float(value) != int(value):
            raise ValueError(f"{name} must be a whole number, got {value!r}")
        value = int(value)
    else:
        value = float(value)
    if p.min is not None and value < p.min or p.max is not None and value > p.max:
        raise ValueError(f"{name} must be between {p.min:g} and {p.max:g}, got {value!r}")
    return value


@dataclass(frozen=True)
class RewardResult:
    value: float | None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def completion_text(completion: Any) -> str:
    """The text of a completion: a string, or TRL's conversational form (a list of messages: the last one's content)."""
    if completion is None:
        return ""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list) and completion and isinstance(completion[-1], Mapping):
        return str(completion[-1].get("content") or "")
    raise RewardError(f"a completion must be text or a list of messages, got {type(completion).__name__}")


def reference_of(row: Any, key: str = "") -> Any:
    """The reference answer in a row: row[key] when a key is named; otherwise the first of REFERENCE_KEYS the row
    has, else the last assistant message of row["messages"]. A bare string row is its own reference."""
    if isinstance(row, str):
        return row
    if not isinstance(row, Mapping):
        raise RewardError(f"the reference row must be a JSON object (a dict), got {type(row).__name__}")
    if key:
        if key not in row:
            raise RewardError(f"the reference row has no field {key!r} (its fields: {', '.join(map(str, row)) or 'none'})")
        return row[key]
    for name in REFERENCE_KEYS:
        if row.get(name) is not None:
            return row[name]
    messages = row.get("messages")
    if isinstance(messages, list):
        for message in reversed(messages):
            if isinstance(message, Mapping) and message.get("role") == "assistant":
                return message.get("content") or ""
    raise RewardError(f"no reference answer in the row: it needs one of {', '.join(REFERENCE_KEYS)} or messages with an "
                      f"assistant turn (its fields: {', '.join(map(str, row)) or 'none'})")


def _reference_text(row: Any, key: str) -> str:
    value = reference_of(row, key)
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def _reference_object(row: Any, key: str) -> dict:
    value = reference_of(row, key)
    obj = value if isinstance(value, dict) else scorers.parse_json_object(value) if isinstance(value, str) else None
    if obj is None:
        raise RewardError(f"the reference answer is not a JSON object: {str(value)[:80]!r}")
    if not obj:
        raise RewardError("the reference answer is an empty JSON object: there is no field to compare")
    return obj


# ----------------------------------------------------------------------------------------------- the built-in rewards

REF_PARAM = RewardParam("reference_field", "Reference field", "The row's field holding the reference answer; empty: the "
                        "first of " + ", ".join(REFERENCE_KEYS) + ", else the last assistant message.", "", "str")


def _make_json_valid(params: dict, ctx: dict) -> ROW_FN:
    return lambda completion, row: scorers.json_validity(completion)


def _make_field_match(params: dict, ctx: dict) -> ROW_FN:
    wanted, free, key = params["field"].strip(), params["free_text"], params["reference_field"]
    if not wanted:
        raise ValueError("params.field (reward 'field_match'): name the JSON field to compare, e.g. urgency")

    def score(completion: str, row: dict) -> float:
        reference = _reference_object(row, key)
        if wanted not in reference:
            raise RewardError(f"the reference answer has no field {wanted!r} (its fields: {', '.join(reference)})")
        return scorers.json_field_scores(completion, reference, [wanted] if free else ())[wanted]
    return score


def _make_field_accuracy(params: dict, ctx: dict) -> ROW_FN:
    free = [name.strip() for name in params["free_text_fields"].split(",") if name.strip()]
    key = params["reference_field"]
    return lambda completion, row: scorers.json_field_accuracy(completion, _reference_object(row, key), free)


def _make_text(fn: Callable[[str, str], float]) -> Callable[[dict, dict], ROW_FN]:
    def make(params: dict, ctx: dict) -> ROW_FN:
        key = params["reference_field"]
        return lambda completion, row: fn(completion, _reference_text(row, key))
    return make


def length_units(text: str, unit: str, count_tokens: Callable[[str], int] | None = None) -> int:
    if unit == "characters":
        return len(text)
    if unit == "words":
        return len(text.split())
    if count_tokens is None:
        raise ValueError("length_penalty in tokens needs a tokenizer (the caller passes count_tokens); use characters or words")
    return int(count_tokens(text))


def _make_length_penalty(params: dict, ctx: dict) -> ROW_FN:
    target, slope, unit = params["target"], params["slope"], params["unit"]
    count_tokens = ctx.get("count_tokens")
    if unit == "tokens" and count_tokens is None:
        raise ValueError("params.unit (reward 'length_penalty'): tokens need a tokenizer, which this caller has not given; "
                         "use characters or words")

    def score(completion: str, row: dict) -> float:
        over = length_units(completion, unit, count_tokens) - target
        return 1.0 if over <= 0 else max(0.0, 1.0 - slope * over / target)
    return score


def regex_available() -> bool:
    return _regex_module is not None


def _make_regex(params: dict, ctx: dict):
    pattern, cap, timeout = params["pattern"], params["max_chars"], params["timeout_s"]
    if not pattern:
        raise ValueError("params.pattern (reward 'regex'): the pattern is empty")
    flags = re.IGNORECASE if params["ignore_case"] else 0
    try:
        compiled = re.compile(pattern, flags)  # the standard syntax is the one documented; refused here if it is wrong
        if _regex_module is not None and not ctx.get("force_sandbox"):
            fast = _regex_module.compile(pattern, flags)
        else:
            fast = None
    except Exception as exc:  # noqa: BLE001 - re.error, or the regex module's own error class
        raise ValueError(f"params.pattern (reward 'regex'): {pattern!r} is not a valid regular expression: {exc}") from exc
    method = "fullmatch" if params["whole_reply"] else "search"

    def check_length(text: str) -> None:
        if len(text) > cap:
            raise RewardError(f"the completion is {len(text)} characters, over the regex reward's cap of {cap} (max_chars)")

    if fast is not None:
        def score(completion: str, row: dict) -> float:
            check_length(completion)
            try:
                return 1.0 if getattr(fast, method)(completion, timeout=timeout) else 0.0
            except TimeoutError as exc:
                raise RewardError(f"the pattern {pattern!r} took over {timeout:g} s on this completion (catastrophic "
                                  "backtracking?); simplify it") from exc
        return score
    source = (f"import re\n_P = re.compile({compiled.pattern!r}, {int(flags)})\n"
              f"def reward(completion, row):\n    return 1.0 if _P.{method}(completion) else 0.0\n")
    # the sandbox's limit is per batch: a start-up allowance plus the per-row limit for every row
    return _SandboxScorer(source, timeout_s=SANDBOX_STARTUP_S, per_row_s=timeout, memory_mb=256, pre_check=check_length,
                          what=f"the pattern {pattern!r}")


def _make_python(params: dict, ctx: dict):
    if not ctx.get("allow_user_code"):
        raise PermissionError("the python reward runs your own code: it is refused unless you allow it "
                              "(tick 'this code may run on my machine'; allow_user_code=True)")
    source = params["source"]
    check_user_source(source)
    return _SandboxScorer(source, timeout_s=params["timeout_s"], memory_mb=params["memory_mb"], what="your reward function")


PYTHON_TEMPLATE = '''def reward(completion: str, row: dict) -> float:
    """An example: 1.0 when the reply mentions the reference's urgency, else 0.0."""
    reference = row.get("reference")
    urgency = str(reference.get("urgency", "")) if isinstance(reference, dict) else ""
    return 1.0 if urgency and urgency.lower() in completion.lower() else 0.0
'''

REWARDS: dict[str, Reward] = {r.name: r for r in (
    Reward("json_valid", "JSON valid (strict)",
           "1 when the whole reply is one JSON object (one ```json fence tolerated), what json.loads on the reply accepts.",
           (), _make_json_valid),
    Reward("field_match", "Field match",
           "1 when the reply's JSON field equals the reference's (normalised text), or their ROUGE-L F1 for free text.",
           (RewardParam("field", "Field", "The JSON field to compare, e.g. urgency.", "", "str"),
            RewardParam("free_text", "Free text", "Score the field by ROUGE-L F1 instead of equality (for prose fields).",
                        False, "bool"), REF_PARAM), _make_field_match),
    Reward("field_accuracy", "Field accuracy",
           "The share of the reference object's fields the reply reproduces (0 when the reply holds no JSON object).",
           (RewardParam("free_text_fields", "Free-text fields", "Comma-separated fields scored by ROUGE-L F1 instead of "
                        "equality, e.g. summary.", "", "str"), REF_PARAM), _make_field_accuracy),
    Reward("exact_match", "Exact match",
           "1 when the reply equals the reference after normalising case, spaces, quotes and trailing punctuation.",
           (REF_PARAM,), _make_text(scorers.exact_match)),
    Reward("contains_answer", "Contains the answer",
           "1 when the reference (a leading article aside) appears in the reply as whole words.",
           (REF_PARAM,), _make_text(scorers.contains_answer)),
    Reward("rouge_l", "ROUGE-L F1",
           "Word-level longest-common-subsequence F1 between the reply and the reference.",
           (REF_PARAM,), _make_text(scorers.rouge_l_f1)),
    Reward("length_penalty", "Length penalty",
           "1 at or under the target length, then falling linearly: slope 1 reaches 0 at twice the target.",
           (RewardParam("target", "Target length", "The length allowed at full reward.", 200, "int", 1, 100_000),
            RewardParam("unit", "Unit", "What is counted (tokens need the model's tokenizer, given by the caller).",
                        "characters", "choice", choices=("characters", "words", "tokens")),
            RewardParam("slope", "Slope", "Reward lost per target-length over the target.", 1.0, "float", 0.0, 100.0)),
           _make_length_penalty),
    Reward("regex", "Regular expression",
           "1 when the pattern matches the reply (anywhere, or the whole reply); time-limited and length-capped.",
           (RewardParam("pattern", "Pattern", "A Python regular expression, e.g. ^Answer: \\d+$.", "", "str"),
            RewardParam("whole_reply", "Whole reply", "The pattern must match the whole reply, not just a part.", False, "bool"),
            RewardParam("ignore_case", "Ignore case", "Match regardless of case.", False, "bool"),
            RewardParam("max_chars", "Length cap", "Longer replies are a per-row error instead of being matched.",
                        20_000, "int", 1, 1_000_000),
            RewardParam("timeout_s", "Time limit (s)", "A match taking longer is a per-row error.", 0.1, "float", 0.001, 10.0)),
           _make_regex),
    Reward("python", "Your Python function",
           "Your own `def reward(completion, row) -> float`, run in a separate process with time and memory limits.",
           (RewardParam("source", "Code", "Python source defining reward(completion: str, row: dict) -> float.",
                        PYTHON_TEMPLATE, "code"),
            RewardParam("timeout_s", "Time limit per batch (s)", "Wall time for one batch of rows; rows not scored by "
                        "then are per-row errors.", 10.0, "float", 0.1, 600.0),
            RewardParam("memory_mb", "Memory limit (MiB)", "Address-space limit of the child process (Linux / macOS).",
                        1024, "int", 64, 65_536)),
           _make_python, low=-math.inf, high=math.inf, runs_user_code=True),
)}


def get_reward(name: str) -> Reward:
    if name not in REWARDS:
        raise ValueError(f"unknown reward {name!r}; choose from {', '.join(REWARDS)}")
    return REWARDS[name]


def reward_table() -> list[dict]:
    """One row per reward for a page or a report: name, title, what it does, range, parameters with defaults."""
    def span(r: Reward) -> str:
        return "any finite number" if math.isinf(r.low) or math.isinf(r.high) else f"[{r.low:g}, {r.high:g}]"
    return [{"name": r.name, "title": r.title, "what it does": r.explanation, "range": span(r),
             "parameters": ", ".join(f"{p.name}={p.default!r}" for p in r.params if p.kind != "code") or "none"}
            for r in REWARDS.values()]


def row_from_json(text: str) -> dict:
    """A reference row typed or pasted as JSON; refused with the position of the mistake, or when it is not an object."""
    try:
        row = json.loads(text or "{}")
    except json.JSONDecodeError as exc:
        raise ValueError(f"the reference row is not valid JSON: line {exc.lineno} column {exc.colno}: {exc.msg}") from exc
    if not isinstance(row, dict):
        raise ValueError(f"the reference row must be a JSON object ({{...}}), got {type(row).__name__}")
    return row


# ----------------------------------------------------------------------------------------------------- scorers


class RewardScorer:
    """One reward with its parameters checked and its state (a compiled pattern...) built once."""

    def __init__(self, reward: Reward, params: dict, row_fn: ROW_FN | None = None, batch: Any = None):
        self.reward, self.params, self._row_fn, self._batch = reward, params, row_fn, batch

    @property
    def name(self) -> str:
        return self.reward.name

    def _check(self, value: Any) -> float:
        if isinstance(value, bool):
            value = float(value)
        if not isinstance(value, (int, float)):
            raise RewardError(f"returned {type(value).__name__} {str(value)[:60]!r}, not a number")
        value = float(value)
        if not math.isfinite(value):
            raise RewardError(f"returned {value}, not a finite number")
        if not self.reward.low <= value <= self.reward.high:
            raise RewardError(f"returned {value}, outside the reward's range [{self.reward.low}, {self.reward.high}]")
        return value

    def score_batch(self, completions: Sequence[Any], rows: Sequence[Any]) -> list[RewardResult]:
        """One RewardResult per row; a row's error never stops the others (nor raises)."""
        if len(completions) != len(rows):
            raise ValueError(f"{len(completions)} completions for {len(rows)} reference rows: one row per completion")
        texts: list[str | None] = []
        early: dict[int, RewardResult] = {}
        for i, completion in enumerate(completions):
            try:
                texts.append(completion_text(completion))
            except RewardError as exc:
                texts.append(None)
                early[i] = RewardResult(None, str(exc))
        if self._batch is not None:
            todo = [i for i in range(len(texts)) if i not in early]
            raw = self._batch.run([texts[i] for i in todo], [rows[i] for i in todo])
            results = dict(early)
            for i, result in zip(todo, raw):
                results[i] = self._validated(result)
            return [results[i] for i in range(len(texts))]
        out = []
        for i, (text, row) in enumerate(zip(texts, rows)):
            if i in early:
                out.append(early[i])
                continue
            try:
                out.append(RewardResult(self._check(self._row_fn(text, row))))
            except Exception as exc:  # noqa: BLE001 - a per-row error, reported with its row
                out.append(RewardResult(None, f"{type(exc).__name__}: {exc}" if not isinstance(exc, RewardError) else str(exc)))
        return out

    def _validated(self, result: RewardResult) -> RewardResult:
        if result.error is not None:
            return result
        try:
            return RewardResult(self._check(result.value))
        except RewardError as exc:
            return RewardResult(None, str(exc))

    def score(self, completion: Any, row: Any) -> float:
        """One row; raises RewardError with the row's error."""
        result = self.score_batch([completion], [row])[0]
        if result.error is not None:
            raise RewardError(f"{self.name}: {result.error}")
        return result.value


def make_scorer(name: str, params: Mapping[str, Any] | None = None, *, allow_user_code: bool = False,
                count_tokens: Callable[[str], int] | None = None, force_sandbox: bool = False) -> RewardScorer:
    """A scorer for one named reward. Bad parameters (and the python reward without allow_user_code) are refused here,
    before any row is scored. `count_tokens` lets length_penalty count tokens; `force_sandbox` runs the regex reward
    in the child process even when the `regex` module is installed."""
    reward = get_reward(name)
    checked = reward.check_params(params)
    made = reward.make(checked, {"allow_user_code": allow_user_code, "count_tokens": count_tokens,
                                 "force_sandbox": force_sandbox})
    if isinstance(made, _SandboxScorer):
        return RewardScorer(reward, checked, batch=made)
    return RewardScorer(reward, checked, row_fn=made)


# ------------------------------------------------------------------------------------------- the user-code sandbox

SANDBOX_STARTUP_S = 2.0  # the regex fallback's allowance for starting the child process
_MARK = "\x1ewb-reward "
_CHILD = r'''
import json, math, sys, traceback
out = sys.stdout
sys.stdout = sys.stderr  # the user's prints never mix with the results
try:
    import resource
    limit = int(sys.argv[1]) << 20
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
except (ImportError, ValueError, OSError):
    pass
job = json.loads(sys.stdin.read())
def send(i, value=None, error=None):
    out.write("\x1ewb-reward " + json.dumps({"i": i, "value": value, "error": error}) + "\n")
    out.flush()
def where(exc):
    lines = [f.lineno for f in traceback.extract_tb(exc.__traceback__) if f.filename == "<reward>"]
    return f" (line {lines[-1]})" if lines else ""
try:
    space = {"__name__": "reward_module"}
    exec(compile(job["source"], "<reward>", "exec"), space)
    fn = space.get("reward")
    if not callable(fn):
        raise NameError("the code defines no function reward(completion, row)")
except BaseException as exc:
    send(-1, error=f"{type(exc).__name__}: {exc}{where(exc)}")
    sys.exit(0)
for i, (completion, row) in enumerate(job["items"]):
    try:
        value = fn(completion, row)
    except MemoryError:
        send(i, error="MemoryError: over the memory limit")
        continue
    except BaseException as exc:
        send(i, error=f"{type(exc).__name__}: {exc}{where(exc)}")
        continue
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        send(i, error=f"returned {type(value).__name__} {str(value)[:60]!r}, not a number")
    elif not math.isfinite(value):
        send(i, error=f"returned {value}, not a finite number")
    else:
        send(i, value=float(value))
'''


def check_user_source(source: str) -> None:
    """Refuse, before anything runs, source that does not parse or defines no top-level reward(completion, row)."""
    try:
        tree = ast.parse(source, "<reward>")
    except SyntaxError as exc:
        raise ValueError(f"params.source (reward 'python'): line {exc.lineno}: {exc.msg}") from exc
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == "reward":
            args = node.args
            if len(args.posonlyargs) + len(args.args) >= 2 or args.vararg:
                return
            raise ValueError("params.source (reward 'python'): reward must take two arguments: (completion, row)")
    raise ValueError("params.source (reward 'python'): define a top-level function `def reward(completion: str, row: dict) -> float`")


class _SandboxScorer:
    """Runs `def reward(completion, row)` from source text in a child `python -I` process, one process per batch."""

    def __init__(self, source: str, *, timeout_s: float, memory_mb: int, what: str, per_row_s: float = 0.0,
                 pre_check: Callable[[str], None] | None = None):
        self.source, self.timeout_s, self.memory_mb, self.what, self.pre_check = source, timeout_s, memory_mb, what, pre_check
        self.per_row_s = per_row_s

    def run(self, completions: Sequence[str], rows: Sequence[Any]) -> list[RewardResult]:
        results: list[RewardResult | None] = [None] * len(completions)
        items = []
        index = []
        for i, (completion, row) in enumerate(zip(completions, rows)):
            try:
                if self.pre_check:
                    self.pre_check(completion)
                items.append([completion, json.loads(json.dumps(row, default=str))])
                index.append(i)
            except (RewardError, TypeError, ValueError) as exc:
                results[i] = RewardResult(None, str(exc))
        if items:
            for i, result in zip(index, self._run_child(items)):
                results[i] = result
        return [r if r is not None else RewardResult(None, "not scored") for r in results]

    def _run_child(self, items: list) -> list[RewardResult]:
        payload = json.dumps({"source": self.source, "items": items})
        limit = self.timeout_s + self.per_row_s * len(items)
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8", "PYTHONIOENCODING": "utf-8"}
        with tempfile.TemporaryDirectory(prefix="wb-reward-") as cwd:
            proc = subprocess.Popen([sys.executable, "-I", "-c", _CHILD, str(self.memory_mb)], stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=cwd, env=env, text=True,
                                    encoding="utf-8", errors="replace", start_new_session=True)
            timed_out = False
            try:
                stdout, stderr = proc.communicate(payload, timeout=limit)
            except subprocess.TimeoutExpired:
                timed_out = True
                _kill_group(proc)
                stdout, stderr = proc.communicate()  # what the child wrote before it was killed is kept
        got: dict[int, RewardResult] = {}
        for line in stdout.split("\n"):  # not splitlines(): it splits on the \x1e marker too
            if not line.startswith(_MARK):
                continue
            try:
                message = json.loads(line[len(_MARK):])
                i = int(message["i"])
            except (ValueError, KeyError, TypeError):
                continue
            if i == -1:  # the source itself failed: every row carries that error
                return [RewardResult(None, f"{self.what} failed to load: {message.get('error')}")] * len(items)
            if 0 <= i < len(items) and i not in got:
                value = message.get("value")
                got[i] = RewardResult(None, message["error"]) if message.get("error") else RewardResult(value)
        results = []
        first_missing = True
        for i in range(len(items)):
            if i in got:
                results.append(got[i])
            elif timed_out and first_missing:
                results.append(RewardResult(None, f"timed out: {self.what} did not finish within the batch's "
                                                  f"{limit:g} s limit"))
                first_missing = False
            elif timed_out:
                results.append(RewardResult(None, f"not scored: the batch's {limit:g} s limit was spent on an earlier row"))
            else:
                tail = (stderr or "").strip().splitlines()[-1:] or [f"exit code {proc.returncode}"]
                results.append(RewardResult(None, f"the child process ended before this row ({tail[0][:200]}); "
                                                  f"over the {self.memory_mb} MiB memory limit?"))
        return results


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the child's own session: anything it started goes too
    except (AttributeError, OSError):  # no process groups (Windows), or already gone
        proc.kill()


# ------------------------------------------------------------------------------------------------ combinations


@dataclass(frozen=True)
class CombinedResult:
    total: float | None  # the weighted sum; None when any part failed on this row
    parts: dict[str, float | None]
    errors: dict[str, str]


class CombinedScorer:
    """Several rewards with weights: the weighted sum and each part (GRPO logs each part)."""

    def __init__(self, parts: list[tuple[str, RewardScorer, float]]):
        if not parts:
            raise ValueError("combine: give at least one reward")
        self.parts = parts

    @property
    def labels(self) -> list[str]:
        return [label for label, _, _ in self.parts]

    def score_batch(self, completions: Sequence[Any], rows: Sequence[Any]) -> list[CombinedResult]:
        columns = [(label, weight, scorer.score_batch(completions, rows)) for label, scorer, weight in self.parts]
        out = []
        for i in range(len(completions)):
            parts = {label: results[i].value for label, _, results in columns}
            errors = {label: results[i].error for label, _, results in columns if results[i].error is not None}
            total = None if errors else sum(weight * results[i].value for _, weight, results in columns)
            out.append(CombinedResult(total, parts, errors))
        return out

    def score(self, completion: Any, row: Any) -> CombinedResult:
        return self.score_batch([completion], [row])[0]


def _label(name: str, params: Mapping[str, Any], taken: Iterable[str]) -> str:
    base = f"{name}:{params['field']}" if name == "field_match" and params.get("field") else name
    label, n = base, 2
    while label in set(taken):
        label, n = f"{base}#{n}", n + 1
    return label


def combine(items: Iterable[tuple[str, Mapping[str, Any] | None, float]], *, allow_user_code: bool = False,
            count_tokens: Callable[[str], int] | None = None) -> CombinedScorer:
    """One scorer from [(name, params, weight), ...]; each part is labelled by its name (field_match by its field)."""
    parts: list[tuple[str, RewardScorer, float]] = []
    for n, item in enumerate(items):
        try:
            name, params, weight = item
        except (TypeError, ValueError) as exc:
            raise ValueError(f"combine: item {n} must be (name, params, weight), got {item!r}") from exc
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight):
            raise ValueError(f"combine: item {n} ({name}): the weight must be a finite number, got {weight!r}")
        scorer = make_scorer(name, params, allow_user_code=allow_user_code, count_tokens=count_tokens)
        parts.append((_label(name, scorer.params, (p[0] for p in parts)), scorer, float(weight)))
    return CombinedScorer(parts)


# ----------------------------------------------------------------------------------------------------- the spec form


@dataclass(frozen=True)
class RewardItem:
    name: str
    params: dict = field(default_factory=dict)
    weight: float = 1.0


@dataclass(frozen=True)
class RewardSpec:
    """A list of rewards with weights, as a TrainSpec (GRPO) or EvaluateSpec carries it:
    {"rewards": [{"name": "json_valid", "weight": 1.0}, {"name": "field_match", "params": {"field": "urgency"}}],
     "allow_user_code": false}"""

    rewards: tuple[RewardItem, ...]
    allow_user_code: bool = False

    @classmethod
    def from_dict(cls, data: Any) -> RewardSpec:
        if isinstance(data, list):
            data = {"rewards": data}
        if not isinstance(data, Mapping):
            raise ValueError(f"rewards: expected a mapping with a `rewards` list, got {type(data).__name__}")
        unknown = sorted(set(data) - {"rewards", "allow_user_code"})
        if unknown:
            raise ValueError(f"rewards: unknown key {unknown[0]!r} (known: rewards, allow_user_code)")
        allow = data.get("allow_user_code", False)
        if not isinstance(allow, bool):
            raise ValueError(f"rewards.allow_user_code must be true or false, got {allow!r}")
        listed = data.get("rewards")
        if not isinstance(listed, list) or not listed:
            raise ValueError("rewards.rewards: give a non-empty list of {name, params, weight}")
        items = []
        for n, entry in enumerate(listed):
            where = f"rewards[{n}]"
            if not isinstance(entry, Mapping):
                raise ValueError(f"{where}: expected {{name, params, weight}}, got {entry!r}")
            extra = sorted(set(entry) - {"name", "params", "weight"})
            if extra:
                raise ValueError(f"{where}: unknown key {extra[0]!r} (known: name, params, weight)")
            name = entry.get("name")
            if name not in REWARDS:
                raise ValueError(f"{where}.name: unknown reward {name!r}; choose from {', '.join(REWARDS)}")
            params = entry.get("params") or {}
            if not isinstance(params, Mapping):
                raise ValueError(f"{where}.params: expected a mapping, got {params!r}")
            weight = entry.get("weight", 1.0)
            if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight):
                raise ValueError(f"{where}.weight: expected a finite number, got {weight!r}")
            checked = REWARDS[name].check_params(params, where=f"{where}.params")
            items.append(RewardItem(name, checked, float(weight)))
        return cls(tuple(items), allow)

    def to_dict(self) -> dict:
        return {"rewards": [{"name": i.name, "params": dict(i.params), "weight": i.weight} for i in self.rewards],
                "allow_user_code": self.allow_user_code}

    def build(self, count_tokens: Callable[[str], int] | None = None) -> CombinedScorer:
        return combine([(i.name, i.params, i.weight) for i in self.rewards], allow_user_code=self.allow_user_code,
                       count_tokens=count_tokens)


# ------------------------------------------------------------------------------------------ GRPO's reward functions

TRL_CONTEXT_KEYS = frozenset({"prompts", "completions", "completion_ids", "trainer_state", "log_extra", "log_metric",
                              "environments"})


def trl_reward_functions(spec: RewardSpec, count_tokens: Callable[[str], int] | None = None) -> tuple[list, list[float]]:
    """The spec as TRL GRPOTrainer's `reward_funcs` and `reward_weights`: one function per part, named by its label
    (TRL logs rewards/<label>/mean and /std), called as `f(prompts=, completions=, completion_ids=, **dataset columns)`.
    The dataset columns of each example make its reference row; a row's error becomes None (TRL: NaN, left out of the
    sum), and the share of failed rows is logged as a metric, `reward_errors/<label>`, with the errors as an extra column
    of the completions table."""
    combined = spec.build(count_tokens=count_tokens)
    funcs = []
    for label, scorer, _ in combined.parts:
        def reward_func(prompts=None, completions=(), _scorer=scorer, _label=label, **kwargs) -> list[float | None]:
            columns = {k: v for k, v in kwargs.items() if k not in TRL_CONTEXT_KEYS}
            rows = [{k: v[i] for k, v in columns.items()} for i in range(len(completions))]
            results = _scorer.score_batch(list(completions), rows)
            errors = [r.error or "" for r in results]
            if any(errors) and callable(kwargs.get("log_extra")):
                kwargs["log_extra"](f"{_label} error", errors)
            if callable(kwargs.get("log_metric")) and results:
                kwargs["log_metric"](f"reward_errors/{_label}", sum(bool(e) for e in errors) / len(results))
            return [r.value for r in results]
        reward_func.__name__ = reward_func.__qualname__ = label
        funcs.append(reward_func)
    return funcs, [weight for _, _, weight in combined.parts]
