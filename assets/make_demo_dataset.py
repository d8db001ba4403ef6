"""Build the demo task: support tickets answered with one fixed JSON object.

    python assets/make_demo_dataset.py          # writes assets/demo/train.jsonl and eval.jsonl

Every ticket is assembled from banks of phrasings (greeting, issue paraphrase naming a product, detail,
impact sentence, sign-off). The answer is a deterministic function of the ticket:

- ``summary``   = the issue's canonical summary with the product name, e.g. "Cannot log in to Nimbus Drive."
- ``next_step`` = fixed per issue kind (one of NEXT_STEPS)
- ``urgency``   = the level of the impact sentence the ticket contains (low / medium / high)

So a model can learn the mapping from a few hundred rows, and evaluation can score JSON validity and
per-field exact match. Seeded: running it twice gives byte-identical files.
"""
from __future__ import annotations

import json
import random
import sys
from pathlib import Path

SEED = 20240611
N_TRAIN = 300
N_EVAL = 60
HERE = Path(__file__).resolve().parent
OUT_DIR = HERE / "demo"

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


def write(rows: list[dict], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def main(out_dir: Path = OUT_DIR) -> None:
    train, evaluation = build()
    write(train, out_dir / "train.jsonl")
    write(evaluation, out_dir / "eval.jsonl")
    print(f"wrote {len(train)} train and {len(evaluation)} eval rows to {out_dir}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else OUT_DIR)
