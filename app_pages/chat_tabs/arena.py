"""Chat page, arena mode: two variants answer one prompt as A and B in a random order; the person votes, then sees who
was who and what proves it. The round, the vote store, the proofs and the standings are core.arena's."""
from __future__ import annotations

from dataclasses import replace
from typing import Callable

import streamlit as st

from core import arena
from core.chat import system_prompt_prefill, variant_training_format
from core.generation import GenerationSettings, start_generation
from core.models import ModelLoadError
from pages_common import cached_chat_model, model_picker

ARENA = "Arena (blind A / B)"
SIDE_BY_SIDE = "Side by side"
ROUND = "arena_round"  # {"round": Round.as_dict(), "sources": [variant 1, variant 2], "answers", "errors", "vote", "reveal"}
STREAMS = "arena_streams"  # {"A": ChatStream, "B": ChatStream} while answering
VOTE_BUTTONS = (("A", "A is better"), ("B", "B is better"), ("tie", "Tie"), ("both_bad", "Both bad"))


def shared_system_prompt(sources: list) -> str:
    """One system prompt for both (the round is the same prompt to both): pre-filled from the first variant that has
    a training run behind it, then the user's own text."""
    chosen = [getattr(s, "label", None) for s in sources]
    if "arena_system" not in st.session_state or st.session_state.get("arena_system_for") != chosen:  # new variants: pre-fill again
        st.session_state["arena_system_for"] = chosen
        record = next((r for r in (variant_training_format(s) for s in sources) if r), None)
        st.session_state["arena_system"], st.session_state["arena_system_note"] = system_prompt_prefill(record)
    text = st.text_area("System prompt (both variants answer with it)", key="arena_system", height=68)
    if st.session_state.get("arena_system_note"):
        st.caption(st.session_state["arena_system_note"])
    return text


def judge_picker():
    """The "ask the judge too" switch and the judge's model (None while off or incomplete)."""
    if not st.toggle("Ask the judge too", key="arena_judge_on", help="After your vote a local model reads the same pair in both "
                     "orders with the shipped rubric (assets/judge/rubric.md); its verdict is recorded beside yours."):
        return None
    return model_picker("Judge model", "arena_judge", default_choice="Embedded default", allow_adapter=False)


def start_round(sources: list, text: str, system: str, settings: GenerationSettings) -> None:
    rnd = arena.new_round(arena.round_messages(text, system), [s.label for s in sources])
    streams = {}
    for label in arena.LABELS:
        with st.spinner(f"Loading the model for {label}…"):
            loaded = cached_chat_model(sources[rnd.variant_of(label)])
        # each variant samples from its own seed: one model on both sides gives two samples, not the same one twice
        own = replace(settings, system_prompt=system, seed=settings.seed + rnd.variant_of(label))
        streams[label] = start_generation(loaded, [{"role": "user", "content": text}], own)
    st.session_state[ROUND] = {"round": rnd.as_dict(), "sources": list(sources), "answers": {}, "errors": {}, "vote": None}
    st.session_state[STREAMS] = streams


def answers_panel() -> None:
    """A and B side by side; a fragment that reruns every 0.5 s while either still streams."""
    state, streams = st.session_state.get(ROUND), st.session_state[STREAMS]
    for label, stream in list(streams.items()):
        if stream.done:
            (state["errors"] if stream.error else state["answers"])[label] = stream.error or stream.text
            del streams[label]
    if state and not streams and len(state["answers"]) + len(state["errors"]) == 2 and state.get("live"):
        state["live"] = False
        st.rerun()  # whole page: the vote buttons come on
    if not state:
        return
    for label, col in zip(arena.LABELS, st.columns(2)):
        with col:
            st.subheader(f"Answer {label}")
            with st.chat_message("assistant"):
                text = state["answers"].get(label, streams[label].text if label in streams else "")
                st.markdown(text + (" ▌" if label in streams else "") if text else "_waiting…_")
            if label in state["errors"]:
                st.error(f"{label}: {state['errors'][label]}")


def cast(vote: str, folder, judge_source) -> None:
    """The vote buttons' callback (it runs before the page, so the page already shows the vote and the reveal)."""
    state = st.session_state[ROUND]
    if state.get("vote"):
        return  # a second click on the same round
    try:
        _cast(state, vote, folder, judge_source)
    except (ModelLoadError, arena.ArenaError, OSError) as exc:
        state["vote_error"] = f"The vote was not recorded: {exc}"


def _cast(state: dict, vote: str, folder, judge_source) -> None:
    rnd = arena.Round.from_dict(state["round"])
    loaded = {label: cached_chat_model(state["sources"][rnd.variant_of(label)]) for label in arena.LABELS}
    with st.spinner("Checking which model answered…"):
        proofs = arena.prove_round(loaded, rnd.prompt)
    judge = None
    if judge_source is not None:
        with st.spinner("The judge reads both answers in both orders…"):
            judge = arena.judge_vote(cached_chat_model(judge_source), rnd, state["answers"], human=vote)
    result = arena.record_vote(folder, rnd, state["answers"], vote, proofs=proofs, judge=judge)
    state.update(vote=result.row["vote"], proofs=proofs, duplicate=result.duplicate, judge=judge)


def reveal(state: dict) -> None:
    rnd = arena.Round.from_dict(state["round"])
    st.success(f"Your vote: {dict(VOTE_BUTTONS)[state['vote']]}" + (" (already recorded)" if state.get("duplicate") else ""))
    for label, col in zip(arena.LABELS, st.columns(2)):
        proof = state["proofs"][label]
        col.markdown(f"**{label} was {rnd.model_of(label)}**")
        col.caption(f"{'✅' if proof['ok'] else '⚠️'} {proof['checked']}")
    if state["proofs"].get("columns"):
        st.caption(state["proofs"]["columns"]["checked"])
    if state.get("judge"):
        st.caption(arena.judge_line(state["judge"]))


def render_arena(variant_source: Callable[[int], object], settings: GenerationSettings) -> None:
    st.caption("Two variants answer the same prompt as A and B, in a random order. Vote first: who was who shows after the vote.")
    st.session_state.setdefault(STREAMS, {})
    cols = st.columns(2)
    sources = []
    for i, col in enumerate(cols):
        with col:
            sources.append(variant_source(i))
    name = st.text_input("Arena dataset name", value="chat", key="arena_name")
    folder = arena.arena_folder(name)
    system = shared_system_prompt(sources)
    judge_source = judge_picker()
    if all(sources) and sources[0].label == sources[1].label:
        st.warning("Both variants are the same model: its votes do not count in the standings.")
    prompt = st.chat_input("Ask both, blind…", key="arena_prompt")
    if prompt:
        if not all(sources):
            st.warning("Choose both variants first.")
        else:
            try:
                start_round(sources, prompt, system, settings)
                st.session_state[ROUND]["live"] = True
            except (ModelLoadError, arena.ArenaError) as exc:
                st.error(str(exc))
    state = st.session_state.get(ROUND)
    st.fragment(answers_panel, run_every=0.5 if st.session_state[STREAMS] else None)()
    ready = bool(state) and len(state["answers"]) == 2 and not st.session_state[STREAMS] and not state.get("vote")
    problem = arena.pair_problem(state["answers"]) if ready else None
    for (vote, label), col in zip(VOTE_BUTTONS, st.columns(4)):
        col.button(label, key=f"arena_vote_{vote}", disabled=not ready or bool(problem and vote in arena.LABELS), width="stretch",
                   on_click=cast, args=(vote, folder, judge_source))
    if problem:
        st.caption(problem[0].upper() + problem[1:] + ".")
    if state and state.get("vote_error"):
        st.error(state.pop("vote_error"))
    if state and state.get("vote"):
        reveal(state)
    st.subheader("Standings")
    st.caption(arena.summary_line(folder))
    votes = arena.read_votes(folder)
    table = arena.standings(votes)
    if table:
        st.dataframe(arena.standings_rows(table), hide_index=True)
        st.caption("Win rate: a tie or both-bad counts half; 95 % bootstrap interval over the model's games. Strength: "
                   "Bradley-Terry, P(i beats j) = s_i / (s_i + s_j).")
    agreement = arena.judge_agreement(votes)
    if agreement:
        kappa = "undefined" if agreement["kappa"] is None else f"{agreement['kappa']:.2f}"
        st.caption(f"Judge vs people on {agreement['n_pairs']} votes (both-bad as a tie): {agreement['raw_agreement']:.0%} the same, "
                   f"Cohen's κ {kappa}.")
