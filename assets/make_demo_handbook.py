"""Build the demo handbook: a fictional company's staff handbook for RAG and RAFT.

    python assets/make_demo_handbook.py        # writes assets/handbook/docs/*.md and questions.jsonl

Thirty short Markdown documents of the made-up company Fernhollow Instruments (six office guides, six
team pages, ten policies, four internal tools, four products) and 150 question / answer rows, five per
document. Every fact is drawn at random from the banks below, so no model can know it beforehand: a
question is answerable only from its document, which is what a knowledge gap looks like. Documents of
one family share their wording ("Reception at the X office can be reached on extension ..."), so the
others of the family are hard negatives for retrieval and good distractors for RAFT.

Each row names its document (`doc_id`) and the sentence that answers it (`evidence`, verbatim in the
document); the gold chunk of any chunking is the chunk that holds that sentence. Seeded: running it
twice gives byte-identical files. Written by the project and licensed with it (see handbook/LICENSE).
"""
from __future__ import annotations

import json
import random
import sys
from pathlib import Path

SEED = 20250214
HERE = Path(__file__).resolve().parent
OUT_DIR = HERE / "handbook"
COMPANY = "Fernhollow Instruments"
FACTS_PER_DOC = 5

FIRST = ("Amara", "Bastien", "Corin", "Dalia", "Emeric", "Fenna", "Gideon", "Halima", "Ivo", "Juno", "Kasimir", "Liesel",
         "Marek", "Nadia", "Osric", "Petra", "Quillon", "Rosalind", "Soren", "Tamsin", "Ulric", "Vesna", "Wendell", "Yara")
LAST = ("Ashcombe", "Brindle", "Corrow", "Dunmere", "Elsworth", "Farrant", "Greyling", "Hollis", "Ingleby", "Jessop",
        "Kettering", "Lowther", "Marchbank", "Nettleford", "Ormsby", "Pellow", "Quarrie", "Rushworth", "Stellan", "Thorne")
ORDINALS = ("second", "third", "fourth", "fifth", "sixth", "seventh", "eighth", "ninth")
BUILDINGS = ("Corner House", "the Tallow Building", "Quarry Court", "the Old Mint", "Harrow Yard", "the Lantern Works",
             "Merrow House", "the Sailmaker's Loft")
PLACES = ("the north car park", "the bandstand on Mill Lane", "the riverside lawn", "the church steps on Hale Street",
          "the loading bay gate", "the far end of the tram stop", "the fountain in Cooper Square", "the bike shelter by gate C")
CAR_PARKS = ("the Orchard Street garage", "level minus two of Quarry Court", "the gravel yard behind the canteen",
             "the Pennant Road multi-storey", "bays 40 to 60 of the east lot", "the Harbour Mile car park")
DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday")
TIMES = ("8:30", "9:15", "10:00", "10:45", "11:30", "13:30", "14:15", "15:00", "16:30")
CHANNELS = ("ask-platform", "pay-help", "field-desk", "data-office-hours", "sec-questions", "ds-components",
            "tern-users", "ledgerly-help", "bramble-support", "quayside-ops")
WORDS = ("heron", "cobalt", "willow", "ember", "sorrel", "tansy", "larch", "marram", "nettle", "yarrow", "bracken", "rowan")

OFFICES = ("Brightwater", "Kestrel Point", "Millbrook", "Saltmarsh", "Ashford Quay", "Pinecrest")
TEAMS = ("Platform", "Payments", "Field Support", "Data Science", "Security", "Design Systems")
TOOLS = (("Tern", "deploys services to production"), ("Ledgerly", "records and approves expense claims"),
         ("Bramble", "tracks laptops, phones and other company equipment"), ("Quayside", "books desks and meeting rooms"))
PRODUCTS = ("Heron Scanner", "Cobalt Hub", "Willow Sensor", "Drift Kiosk")

FILLER = (
    "This page is reviewed every quarter by the Workplace team.",
    "Suggestions for this page are welcome in the handbook feedback form.",
    "Older versions of this page are kept in the handbook archive.",
    "Where this page and a signed contract differ, the contract applies.",
    "Managers are expected to point new starters to this page in their first week.",
    "The rules here apply to employees and long-term contractors alike.",
)


class Draw:
    """Random values that differ across the documents of a family (so a distractor never holds the answer)."""

    def __init__(self, rng: random.Random):
        self.rng, self.used = rng, set()

    def pick(self, slot: str, options) -> str:
        fresh = [o for o in options if (slot, str(o)) not in self.used]
        value = str(self.rng.choice(fresh or list(options)))
        self.used.add((slot, value))
        return value

    def person(self) -> str:
        return self.pick("person", [f"{first} {last}" for first in FIRST for last in LAST])

    def number(self, slot: str, low: int, high: int, step: int = 1) -> str:
        return self.pick(slot, range(low, high + 1, step))

    def money(self, slot: str, low: int, high: int, step: int = 5) -> str:
        return "€" + self.number(slot, low, high, step)


def office_facts(name: str, d: Draw) -> list[tuple[str, str, str]]:
    """(sentence, question, answer) candidates for one office guide; five are drawn."""
    ordinal, building, place, ext = (d.pick("floor", ORDINALS), d.pick("building", BUILDINGS), d.pick("place", PLACES),
                                     d.number("ext", 2000, 8999))
    opens, lead, ssid, park = (d.pick("opens", ("7:00", "7:15", "7:30", "7:45", "8:00", "8:15")), d.person(),
                               "fern-guest-" + d.pick("word", WORDS), d.pick("park", CAR_PARKS))
    return [
        (f"The {name} office occupies the {ordinal} floor of {building}.", f"Which floor is the {name} office on?", f"the {ordinal} floor"),
        (f"During a fire alarm, staff at the {name} office gather at {place}.",
         f"Where do staff at the {name} office gather during a fire alarm?", place),
        (f"Reception at the {name} office can be reached on extension {ext}.",
         f"What is the reception extension at the {name} office?", ext),
        (f"The {name} building opens at {opens} on weekdays.", f"What time does the {name} office open on weekdays?", opens),
        (f"The first-aid lead at the {name} office is {lead}.", f"Who is the first-aid lead at the {name} office?", lead),
        (f"Guests at the {name} office connect to the Wi-Fi network {ssid}.",
         f"Which Wi-Fi network do guests use at the {name} office?", ssid),
        (f"Visitors to the {name} office park in {park}.", f"Where do visitors to the {name} office park?", park),
    ]


def team_facts(name: str, d: Draw, channel: str) -> list[tuple[str, str, str]]:
    lead, meeting, code = (d.person(), d.pick("meeting", [f"{day} at {time}" for day in DAYS for time in TIMES]),
                           "CC-" + d.number("code", 100, 999))
    rotation, size, room = (d.number("rotation", 3, 14), d.number("size", 5, 40),
                            "room " + d.pick("room", [f"{a}{n}" for a in "ABCDEFG" for n in range(1, 10)]))
    return [
        (f"The {name} team is led by {lead}.", f"Who leads the {name} team?", lead),
        (f"Questions for the {name} team go to the #{channel} channel.",
         f"Which chat channel takes questions for the {name} team?", f"#{channel}"),
        (f"The {name} team holds its weekly planning meeting on {meeting}.",
         f"When does the {name} team hold its weekly planning meeting?", meeting),
        (f"Expenses of the {name} team are charged to cost centre {code}.",
         f"Which cost centre are the {name} team's expenses charged to?", code),
        (f"Each engineer on the {name} team is on call for {rotation} days at a time.",
         f"How many days at a time is an engineer on the {name} team on call?", f"{rotation} days"),
        (f"The {name} team has {size} members.", f"How many members does the {name} team have?", size),
        (f"The {name} team sits in {room} of its home office.", f"Which room does the {name} team sit in?", room),
    ]


def tool_facts(name: str, d: Draw, channel: str) -> list[tuple[str, str, str]]:
    owner, days, window, path = (d.pick("owner", TEAMS), d.pick("retention", (30, 45, 60, 90, 180, 365)), d.pick("window", DAYS),
                                 f"/{name.lower()}/" + d.pick("word", WORDS))
    year, admin = d.number("year", 2014, 2023), d.person()
    return [
        (f"{name} is owned by the {owner} team.", f"Which team owns {name}?", f"the {owner} team"),
        (f"Help with {name} is given in the #{channel} channel.", f"Where can staff get help with {name}?", f"#{channel}"),
        (f"{name} keeps its logs for {days} days.", f"How long does {name} keep its logs?", f"{days} days"),
        (f"{name} goes down for maintenance every {window} evening.", f"On which evening does {name} go down for maintenance?", window),
        (f"Staff open {name} at the intranet address {path}.", f"At which intranet address do staff open {name}?", path),
        (f"{name} was introduced in {year}.", f"In which year was {name} introduced?", year),
        (f"The administrator of {name} is {admin}.", f"Who is the administrator of {name}?", admin),
    ]


def product_facts(name: str, d: Draw) -> list[tuple[str, str, str]]:
    year, months, part = d.number("launch", 2016, 2024), d.pick("warranty", (12, 18, 24, 30, 36, 48)), "FH-" + d.number("part", 1000, 9999)
    grams, hours, lead = d.number("grams", 180, 2400, 20), d.number("hours", 6, 72), d.person()
    return [
        (f"The {name} was launched in {year}.", f"In which year was the {name} launched?", year),
        (f"The {name} comes with a warranty of {months} months.", f"How long is the warranty on the {name}?", f"{months} months"),
        (f"The {name} has the part number {part}.", f"What is the part number of the {name}?", part),
        (f"The {name} weighs {grams} grams.", f"How much does the {name} weigh?", f"{grams} grams"),
        (f"On one charge the {name} runs for {hours} hours.", f"How many hours does the {name} run on one charge?", f"{hours} hours"),
        (f"The product manager for the {name} is {lead}.", f"Who is the product manager for the {name}?", lead),
    ]


def policy_docs(d: Draw) -> list[tuple[str, str, str, list[tuple[str, str, str]]]]:
    """(doc id, title, intro, facts) of the ten policies; each has its own wording."""
    leave, carry, notice, approver = (d.number("n", 24, 31), d.number("n", 3, 10), d.number("n", 2, 6),
                                      d.pick("choice", ("line manager", "department head", "People team")))
    paid, half, kit, tell = d.number("n", 12, 26), d.number("n", 4, 16), d.number("n", 6, 12), d.number("n", 8, 15)
    hours, hotel, tool, per_diem = (d.number("n", 4, 8), d.money("money", 120, 260),
                                    d.pick("choice", ("Wayfarer", "Skylark Travel", "Compass Desk")), d.money("money", 35, 70))
    meal, receipt, deadline, mileage = (d.money("money", 25, 60), d.money("money", 10, 40), d.number("n", 20, 60),
                                        d.number("n", 19, 35) + " cents per kilometre")
    home, core, stipend, abroad = (d.number("n", 2, 4),
                                   d.pick("core", ("9:30", "10:00", "10:30")) + " to " + d.pick("core", ("15:00", "15:30", "16:00")),
                                   d.money("money", 200, 600, 50), d.number("n", 15, 45))
    refresh, monitor, returns, report = d.number("n", 3, 5), d.money("money", 150, 400, 25), d.number("n", 5, 14), d.number("n", 2, 24)
    budget, conf, cert, library = (d.money("money", 800, 2500, 100), d.number("n", 2, 6), d.number("n", 50, 100) + " percent",
                                   d.pick("choice", ("Reading Room", "Shelfmark", "Lectern")))
    length, mfa, badge, escort = (d.number("n", 12, 20), d.pick("choice", ("Keyfob", "Warden Auth", "Latchkey")), d.number("n", 1, 8),
                                  d.pick("choice", ("a host from the team they visit", "a member of reception",
                                                    "a badge-holding employee")))
    sick, cert_days, wellbeing, sick_line = (d.number("n", 8, 20), d.number("n", 3, 7),
                                             d.pick("choice", ("Harbour Health", "Calmwater", "Lifeline Plus")),
                                             "extension " + d.number("ext", 2000, 8999))
    book, early, payday = d.pick("word", WORDS).capitalize(), d.number("n", 2, 11), d.pick("choice", ("1st", "8th", "15th", "25th", "28th"))
    updated = d.pick("month", ("March", "June", "September", "November")) + " " + d.number("n", 2021, 2024)
    gift, register, hospitality, ethics = (d.money("money", 30, 100),
                                           d.pick("choice", ("the compliance register", "the gifts log", "the hospitality ledger")),
                                           d.money("money", 60, 200, 10), d.person())
    return [
        ("policy-annual-leave", "Annual leave policy", "How holidays are earned, booked and carried over.", [
            (f"Full-time employees receive {leave} days of annual leave per year.",
             "How many days of annual leave do full-time employees get per year?", f"{leave} days"),
            (f"Up to {carry} days of unused leave may be carried over into the next year.",
             "How many unused leave days can be carried over into the next year?", f"{carry} days"),
            (f"Leave of a week or longer must be requested {notice} weeks in advance.",
             "How far in advance must leave of a week or longer be requested?", f"{notice} weeks"),
            (f"Leave requests are approved by your {approver}.", "Who approves leave requests?", f"your {approver}"),
            (f"Annual leave is booked in the {book} calendar.", "In which calendar is annual leave booked?", f"the {book} calendar"),
        ]),
        ("policy-parental-leave", "Parental leave policy", "Leave for new parents, by birth or adoption.", [
            (f"New parents receive {paid} weeks of parental leave on full pay.",
             "How many weeks of fully paid parental leave do new parents get?", f"{paid} weeks"),
            (f"A further {half} weeks are paid at half pay.", "How many further weeks of parental leave are paid at half pay?",
             f"{half} weeks"),
            (f"Parents on leave may work up to {kit} days as keeping-in-touch days.",
             "How many keeping-in-touch days may a parent on leave work?", f"{kit} days"),
            (f"Tell the People team at least {tell} weeks before the leave begins.",
             "How many weeks before parental leave begins must the People team be told?", f"{tell} weeks"),
            (f"Parental leave can start up to {early} weeks before the due date.",
             "How early before the due date can parental leave start?", f"{early} weeks"),
        ]),
        ("policy-travel", "Business travel policy", "Booking and paying for work trips.", [
            (f"Flights shorter than {hours} hours are booked in economy class.",
             "Below how many hours of flight time must flights be booked in economy?", f"{hours} hours"),
            (f"Hotel stays are capped at {hotel} per night.", "What is the hotel cap per night on business trips?", hotel),
            (f"All trips are booked through {tool}.", "Which tool are business trips booked through?", tool),
            (f"Travellers receive a daily allowance of {per_diem} for incidentals.",
             "What daily allowance do travellers get for incidentals?", per_diem),
            ("Trips abroad need approval from a director.", "Who must approve trips abroad?", "a director"),
        ]),
        ("policy-expenses", "Expenses policy", "What can be claimed back and how.", [
            (f"Meals on work days are reimbursed up to {meal} per day.", "Up to how much are meals reimbursed per work day?", meal),
            (f"A receipt is required for any expense over {receipt}.", "Above what amount is a receipt required for an expense?", receipt),
            (f"Claims must be submitted within {deadline} days of the expense.",
             "Within how many days of the expense must a claim be submitted?", f"{deadline} days"),
            (f"Driving your own car is reimbursed at {mileage}.", "At what rate is driving your own car reimbursed?", mileage),
            (f"Approved claims are paid on the {payday} of each month.",
             "On which day of the month are approved expense claims paid?", f"the {payday}"),
        ]),
        ("policy-remote-work", "Remote work policy", "Working from home and from abroad.", [
            (f"Employees may work from home up to {home} days per week.",
             "How many days per week may employees work from home?", f"{home} days"),
            (f"Core hours, when everyone should be reachable, run from {core}.",
             "What are the core hours when everyone should be reachable?", core),
            (f"A one-off home office stipend of {stipend} is paid in the first month.",
             "How much is the one-off home office stipend?", stipend),
            (f"Working from abroad is allowed for up to {abroad} days a year.",
             "For how many days a year is working from abroad allowed?", f"{abroad} days"),
            ("Remote workers must use the company VPN on public networks.",
             "What must remote workers use on public networks?", "the company VPN"),
        ]),
        ("policy-equipment", "Equipment policy", "Laptops, screens and what to do when something is lost.", [
            (f"Laptops are replaced every {refresh} years.", "How often are laptops replaced?", f"every {refresh} years"),
            (f"Each employee may claim a monitor allowance of {monitor}.", "How much is the monitor allowance?", monitor),
            (f"Leavers return their equipment within {returns} days of their last day.",
             "Within how many days of their last day must leavers return equipment?", f"{returns} days"),
            (f"A lost or stolen device must be reported within {report} hours.",
             "Within how many hours must a lost or stolen device be reported?", f"{report} hours"),
            ("Repairs are requested in Bramble, the equipment tracker.", "Where are equipment repairs requested?", "Bramble"),
        ]),
        ("policy-training", "Learning and training policy", "Courses, conferences and certifications.", [
            (f"Every employee has a yearly training budget of {budget}.", "How large is the yearly training budget per employee?", budget),
            (f"Employees may spend up to {conf} working days a year at conferences.",
             "How many working days a year may employees spend at conferences?", f"{conf} working days"),
            (f"The company reimburses {cert} of certification exam fees.",
             "What share of certification exam fees does the company reimburse?", cert),
            (f"Books and online courses are requested through {library}.",
             "Through which service are books and online courses requested?", library),
            ("Training requests are approved by your line manager.", "Who approves training requests?", "your line manager"),
        ]),
        ("policy-security", "Information security policy", "Passwords, badges and visitors.", [
            (f"Passwords must be at least {length} characters long.", "How long must passwords be at least?", f"{length} characters"),
            (f"Two-factor sign-in uses the {mfa} app.", "Which app is used for two-factor sign-in?", mfa),
            (f"A lost badge must be reported within {badge} hours.", "Within how many hours must a lost badge be reported?",
             f"{badge} hours"),
            (f"Visitors must be escorted by {escort} at all times.", "Who must escort visitors at all times?", escort),
            ("Confidential papers go in the locked shredding bins.", "Where do confidential papers go?", "the locked shredding bins"),
        ]),
        ("policy-sickness", "Sickness and wellbeing policy", "Being ill, and help when things are hard.", [
            (f"Employees receive {sick} days of paid sick leave per year.",
             "How many days of paid sick leave do employees get per year?", f"{sick} days"),
            (f"A doctor's note is needed after {cert_days} days of sickness in a row.",
             "After how many consecutive sick days is a doctor's note needed?", f"{cert_days} days"),
            (f"Free counselling is offered through {wellbeing}.", "Through which service is free counselling offered?", wellbeing),
            (f"Report a sick day to the absence line on {sick_line}.", "Where is a sick day reported?", f"the absence line on {sick_line}"),
            ("Sick leave is recorded in the absence calendar by your manager.",
             "Who records sick leave in the absence calendar?", "your manager"),
        ]),
        ("policy-gifts", "Gifts and hospitality policy", "Accepting gifts from customers and suppliers.", [
            (f"Gifts worth more than {gift} must be declined.", "Above what value must gifts be declined?", gift),
            (f"Every gift accepted is recorded in {register}.", "Where is every accepted gift recorded?", register),
            (f"Hospitality worth more than {hospitality} per person needs approval.",
             "Above what value per person does hospitality need approval?", hospitality),
            (f"Questions about this policy go to the ethics officer, {ethics}.", "Who is the ethics officer?", ethics),
            (f"This policy was last updated in {updated}.", "When was the gifts and hospitality policy last updated?", updated),
        ]),
    ]


def document_text(title: str, intro: str, sentences: list[str], rng: random.Random) -> str:
    """A Markdown page: heading, intro, then the sentences in two paragraphs with a filler line or two."""
    lines = list(sentences) + rng.sample(FILLER, 2)
    rng.shuffle(lines)
    middle = len(lines) // 2
    return f"# {title}\n\n{intro}\n\n{' '.join(lines[:middle])}\n\n{' '.join(lines[middle:])}\n"


def build(seed: int = SEED) -> tuple[list[dict], list[dict]]:
    """(documents {id, title, text}, question rows {id, question, answer, doc_id, evidence})."""
    rng = random.Random(seed)
    d = Draw(rng)
    channels = list(CHANNELS)
    specs: list[tuple[str, str, str, list[tuple[str, str, str]]]] = []
    for name in OFFICES:
        specs.append((f"office-{name.lower().replace(' ', '-')}", f"Office guide: {name}",
                      f"Everything a visitor or new starter needs to know about the {name} office of {COMPANY}.", office_facts(name, d)))
    for n, name in enumerate(TEAMS):
        specs.append((f"team-{name.lower().replace(' ', '-')}", f"Team page: {name}",
                      f"Who the {name} team are and how to work with them.", team_facts(name, d, channels[n])))
    for n, (name, purpose) in enumerate(TOOLS):
        specs.append((f"tool-{name.lower()}", f"Internal tool: {name}",
                      f"{name} {purpose} at {COMPANY}.", tool_facts(name, d, channels[len(TEAMS) + n])))
    for name in PRODUCTS:
        specs.append((f"product-{name.lower().replace(' ', '-')}", f"Product sheet: {name}",
                      f"Key facts about the {name}, one of {COMPANY}'s products.", product_facts(name, d)))
    specs += policy_docs(d)
    documents, rows = [], []
    for doc_id, title, intro, facts in specs:
        chosen = rng.sample(facts, FACTS_PER_DOC) if len(facts) > FACTS_PER_DOC else list(facts)
        sentences = [sentence for sentence, _, _ in facts]  # every candidate fact is in the text; five are asked
        documents.append({"id": doc_id, "title": title, "text": document_text(title, intro, sentences, rng)})
        for sentence, question, answer in chosen:
            rows.append({"question": question, "answer": answer, "doc_id": doc_id, "evidence": sentence})
    rng.shuffle(rows)  # mixed documents, so any first n rows cover many of them
    for n, row in enumerate(rows, 1):
        row["id"] = f"hb-{n:03d}"
    rows = [{"id": r["id"], **{k: v for k, v in r.items() if k != "id"}} for r in rows]
    _check(documents, rows)
    return documents, rows


def _check(documents: list[dict], rows: list[dict]) -> None:
    texts = {d["id"]: d["text"] for d in documents}
    for row in rows:
        if row["evidence"] not in texts[row["doc_id"]]:
            raise AssertionError(f"{row['id']}: the evidence is not in {row['doc_id']}")
        if row["answer"].lower() not in row["evidence"].lower():
            raise AssertionError(f"{row['id']}: the answer {row['answer']!r} is not in its evidence")
    questions = [r["question"] for r in rows]
    if len(set(questions)) != len(questions):
        raise AssertionError("two rows ask the same question")


def main(out_dir: Path = OUT_DIR) -> None:
    documents, rows = build()
    docs_dir = out_dir / "docs"
    docs_dir.mkdir(parents=True, exist_ok=True)
    for old in docs_dir.glob("*.md"):
        old.unlink()
    for doc in documents:
        (docs_dir / f"{doc['id']}.md").write_text(doc["text"], encoding="utf-8")
    (out_dir / "questions.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    print(f"wrote {len(documents)} documents to {docs_dir} and {len(rows)} questions to {out_dir / 'questions.jsonl'}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else OUT_DIR)
