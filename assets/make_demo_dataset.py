"""Build the demo task: support tickets answered with one fixed JSON object.

    python assets/make_demo_dataset.py          # writes assets/demo/train.jsonl and eval.jsonl

Every ticket is assembled from banks of phrasings (greeting, issue paraphrase naming a product, detail,
impact sentence, sign-off). The answer is a deterministic function of the ticket:

- ``summary``   = the issue's canonical summary with the product name, e.g. "Cannot log in to Nimbus Drive."
- ``next_step`` = fixed per issue kind (one of NEXT_STEPS)
- ``urgency``   = the level of the impact sentence the ticket contains (low / medium / high)

So a model can learn the mapping from a few hundred rows, and evaluation can score JSON validity and
per-field exact match. Seeded: running it twice gives byte-identical files.

Planted flaws (issue 29 item 8). A real dataset is never clean, and a perfectly clean demo makes every curation tool
on the Data page answer zero. So PLANTED puts 11 flawed rows into train.jsonl, each replacing the clean row at its
position (the eval split is untouched, and no planted position is one of the 200 rows the preference pairs are built
from: assets/make_demo_preferences.py checks it). Every Data tab finds and drops its own:

- De-duplication: ``exact_copy`` (an earlier row verbatim) and ``exact_recased`` (an earlier row lower-cased with
  doubled spaces: equal after the exact key's normalisation); ``near_forwarded`` and ``near_greeting`` (an earlier
  ticket forwarded again, "Fwd: ...", or with another greeting: word 5-gram Jaccard >= 0.8, the default threshold,
  but not equal after normalising). A change in the middle of a ticket would not do: on these short rows one changed
  word alters 5 of about 33 shingles, a Jaccard near 0.74.
  "Keep first seen" keeps the original and drops the copy;
- Decontamination: ``leak_gsm8k`` (x2) and ``leak_humaneval``, tickets quoting a test item of the benchmarks the tab
  checks by default (assets/benchmarks, MIT) verbatim (a short GSM8K question whole; a HumanEval prompt's first lines,
  so the row stays inside the CPU demo's max_length), with the ticket's normal answer;
- Response audit: ``refusal`` ("I'm sorry, but I cannot help with that request."), ``truncated_json`` (the answer
  cut off mid-value), ``prose_answer`` (the fields written as a sentence: not JSON in a JSON-shaped set) and
  ``echo_answer`` (the ticket copied back as the answer).

The planted rows are 11 of 300 and the bad answers 4 of them, so the one-click demo still trains to "improved".
`planted()` maps each planted row's position to its kind and (for copies) its source row: the tests read it.
"""
from __future__ import annotations

import gzip
import json
import random
import sys
from pathlib import Path

SEED = 20240611
N_TRAIN = 300
N_EVAL = 60
HERE = Path(__file__).resolve().parent
OUT_DIR = HERE / "demo"
BENCHMARKS_DIR = HERE / "benchmarks"

# position in train.jsonl -> what is planted there (see the docstring). Positions outside the preference pairs' sample.
PLANTED: dict[int, str] = {
    201: "exact_copy", 206: "leak_gsm8k", 210: "refusal", 214: "near_forwarded", 224: "truncated_json",
    236: "exact_recased", 247: "leak_humaneval", 261: "prose_answer", 272: "near_greeting", 280: "leak_gsm8k",
    291: "echo_answer",
}
LEAK_WORDS = 24  # the HumanEval leak quotes the first lines of a prompt holding at least this many words; GSM8K: <= 40 words
PLANTED_SEED = SEED + 29  # its own stream: the clean rows (and the eval split) stay what they were

NEXT_STEPS = (
    "reset_password",
    "issue_refund",
    "escalate_to_engineering",
    "send_replacement",
    "update_billing_details",
    "send_setup_guide",
)

SYSTEM_PROMPT = (
    "You triage customer support tickets. Reply with only a JSON object with the keys "
    '"summary" (one short sentence), "next_step" (one of: ' + ", ".join(NEXT_STEPS) + ') '
    'and "urgency" ("low", "medium" or "high").'
)

PRODUCTS = (
    "Nimbus Drive", "Pocket Ledger", "Orbit Router", "Lumen Lamp", "Quill Notes",
    "Harbor VPN", "Atlas Watch", "Tandem Chat",
)

# kind -> (next_step, summary template, ticket paraphrases); {p} is the product
ISSUES: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "login": ("reset_password", "Cannot log in to {p}.", (
        "I can't log in to {p} anymore.",
        "{p} keeps rejecting my password.",
        "I'm locked out of my {p} account.",
        "Signing in to {p} fails every time.",
    )),
    "double_charge": ("issue_refund", "Charged twice for {p}.", (
        "I was billed twice for {p} this month.",
        "My card shows two charges for {p}.",
        "{p} charged me a second time by mistake.",
    )),
    "crash": ("escalate_to_engineering", "{p} crashes on startup.", (
        "{p} crashes as soon as I open it.",
        "Every time I start {p} it closes immediately.",
        "{p} freezes and shuts down on launch.",
    )),
    "sync": ("escalate_to_engineering", "{p} is not syncing data.", (
        "My data stopped syncing in {p}.",
        "Changes I make in {p} never show up on my other devices.",
        "{p} says sync failed again.",
    )),
    "broken_device": ("send_replacement", "{p} arrived damaged.", (
        "My {p} arrived with a cracked case.",
        "The {p} I received is broken out of the box.",
        "{p} was damaged in shipping and does not turn on.",
    )),
    "card_expired": ("update_billing_details", "Payment for {p} failed.", (
        "My payment for {p} was declined.",
        "{p} says my card expired and the renewal failed.",
        "I got an email that the {p} subscription payment failed.",
    )),
    "setup": ("send_setup_guide", "Needs help setting up {p}.", (
        "I just bought {p} and don't know how to set it up.",
        "How do I get {p} working for the first time?",
        "Setting up {p} is confusing, where do I start?",
    )),
}

DETAILS = (
    "I already tried restarting.",
    "This started yesterday.",
    "I'm on the latest version.",
    "Nothing in the help center covered it.",
    "I use it on both my phone and laptop.",
    "",
)

IMPACT: dict[str, tuple[str, ...]] = {
    "high": (
        "Our whole team is blocked right now.",
        "This is stopping all of our orders today.",
        "We have a client demo in two hours and need this fixed.",
        "It is urgent, we are losing money every minute.",
    ),
    "medium": (
        "It has happened three times this week.",
        "We have a workaround but it slows us down.",
        "Please look at it in the next day or two.",
    ),
    "low": (
        "No rush, whenever you get a chance.",
        "Just letting you know, it is not urgent.",
        "It is a minor annoyance for now.",
    ),
}

GREETINGS = ("Hi,", "Hello support,", "Hey there,", "Good morning,", "")
NAMES = ("Ana", "Ben", "Chloe", "Dev", "Elif", "Farid", "Grace", "Hiro", "Ines", "Jonas", "Kemi", "Luca")
SIGNOFFS = ("Thanks, {n}", "Best, {n}", "- {n}", "Regards, {n}", "{n}")


def answer_for(kind: str, product: str, urgency: str) -> dict:
    next_step, summary, _ = ISSUES[kind]
    return {"summary": summary.format(p=product), "next_step": next_step, "urgency": urgency}


def make_ticket(rng: random.Random) -> tuple[str, dict]:
    kind = rng.choice(sorted(ISSUES))
    product = rng.choice(PRODUCTS)
    urgency = rng.choice(("low", "medium", "high"))
    parts = [
        rng.choice(GREETINGS),
        rng.choice(ISSUES[kind][2]).format(p=product),
        rng.choice(DETAILS),
        rng.choice(IMPACT[urgency]),
        rng.choice(SIGNOFFS).format(n=rng.choice(NAMES)),
    ]
    return " ".join(p for p in parts if p), answer_for(kind, product, urgency)


def to_row(ticket: str, answer: dict) -> dict:
    return {
        "messages": [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": ticket},
            {"role": "assistant", "content": json.dumps(answer)},
        ]
    }


def build(seed: int = SEED, n_train: int = N_TRAIN, n_eval: int = N_EVAL) -> tuple[list[dict], list[dict]]:
    """Distinct tickets: the eval split shares no ticket text with the train split."""
    rng = random.Random(seed)
    seen: set[str] = set()
    rows: list[dict] = []
    while len(rows) < n_train + n_eval:
        ticket, answer = make_ticket(rng)
        if ticket in seen:
            continue
        seen.add(ticket)
        rows.append(to_row(ticket, answer))
    return rows[:n_train], rows[n_train:]


def _join(parts: list[str]) -> str:
    return " ".join(p for p in parts if p)


def _benchmark_items(name: str) -> list[str]:
    """The test items the Decontamination tab checks by default (core.data.decontam.BUILTIN_BENCHMARKS)."""
    if name == "gsm8k":
        lines = (BENCHMARKS_DIR / "gsm8k_test.jsonl").read_text(encoding="utf-8").splitlines()
        return [json.loads(line)["question"] for line in lines if line.strip()]
    with gzip.open(BENCHMARKS_DIR / "humaneval.jsonl.gz", "rt", encoding="utf-8") as handle:
        return [json.loads(line)["prompt"] for line in handle if line.strip()]


def _head(text: str, n_words: int) -> str:
    """The first lines of `text` holding at least `n_words` words: enough for the 13-gram rule to find, short enough that
    the row stays inside the demo's max_length of 256 tokens (a whole HumanEval prompt would be cut, its answer lost)."""
    lines, count = [], 0
    for line in text.strip("\n").splitlines():
        lines.append(line)
        count += len(line.split())
        if count >= n_words:
            break
    return "\n".join(lines)


def _plant(kind: str, clean: list[dict], position: int, rng: random.Random) -> tuple[dict, int | None]:
    """The flawed row of `kind` for `position`, and the earlier row it copies (None for a new ticket)."""
    if kind in ("exact_copy", "exact_recased", "near_forwarded", "near_greeting"):
        source = rng.randrange(position)
        system, user, assistant = (m["content"] for m in clean[source]["messages"])
        if kind == "exact_recased":
            user = "  ".join(user.lower().split(" "))
        elif kind == "near_forwarded":  # the same ticket forwarded once more
            user = "Fwd: " + user
        elif kind == "near_greeting":  # a greeting the bank does not have, instead of the ticket's own
            greeting = next((g for g in GREETINGS if g and user.startswith(g + " ")), "")
            user = "Hello again, " + user[len(greeting):].lstrip()
        return {"messages": [{"role": "system", "content": system}, {"role": "user", "content": user},
                             {"role": "assistant", "content": assistant}]}, source
    product, urgency = rng.choice(PRODUCTS), rng.choice(("low", "medium", "high"))
    if kind == "leak_gsm8k":  # a homework question pasted into a notes app that stopped syncing
        question = rng.choice([q for q in _benchmark_items("gsm8k") if len(q.split()) <= LEAK_WORDS + 16])  # fits max_length
        ticket = _join([rng.choice(GREETINGS), f"My notes stopped syncing in {product}, including this one: \"{question}\"",
                        rng.choice(IMPACT[urgency]), rng.choice(SIGNOFFS).format(n=rng.choice(NAMES))])
        return to_row(ticket, answer_for("sync", product, urgency)), None
    if kind == "leak_humaneval":  # the head of a HumanEval prompt (signature + docstring start) pasted into a crash report
        snippet = _head(rng.choice(_benchmark_items("humaneval")), LEAK_WORDS)
        ticket = f"{product} crashes as soon as I open it with this file:\n\n{snippet}\n{rng.choice(IMPACT[urgency])}"
        return to_row(ticket, answer_for("crash", product, urgency)), None
    ticket, reference = make_ticket(rng)  # a new clean ticket with a bad answer
    if kind == "refusal":
        answer = "I'm sorry, but I cannot help with that request."
    elif kind == "truncated_json":
        text = json.dumps(reference)
        answer = text[:text.index('"next_step"') + len('"next_step": "') + 5]
    elif kind == "prose_answer":
        answer = (f"The customer reports: {reference['summary']} The next step is {reference['next_step'].replace('_', ' ')}, "
                  f"with {reference['urgency']} urgency.")
    elif kind == "echo_answer":
        answer = ticket
    else:
        raise ValueError(f"unknown planted kind {kind!r}")
    row = to_row(ticket, reference)
    row["messages"][-1]["content"] = answer
    return row, None


def plant(train: list[dict], seed: int = PLANTED_SEED) -> tuple[list[dict], dict[int, tuple[str, int | None]]]:
    """`train` with PLANTED's rows in place; position -> (kind, source row or None)."""
    rng = random.Random(seed)
    rows, where = list(train), {}
    for position, kind in sorted(PLANTED.items()):
        rows[position], source = _plant(kind, train, position, rng)
        where[position] = (kind, source)
    return rows, where


def planted(seed: int = SEED) -> dict[int, tuple[str, int | None]]:
    """Where the flaws are in the shipped train.jsonl: position -> (kind, the earlier row a copy repeats, or None)."""
    return plant(build(seed)[0])[1]


def write(rows: list[dict], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def main(out_dir: Path = OUT_DIR) -> None:
    train, evaluation = build()
    train, where = plant(train)
    write(train, out_dir / "train.jsonl")
    write(evaluation, out_dir / "eval.jsonl")
    print(f"wrote {len(train)} train rows ({len(where)} of them planted flaws) and {len(evaluation)} eval rows to {out_dir}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else OUT_DIR)
