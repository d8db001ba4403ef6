"""Every export is loaded back and compared with the model it came from before it is called done.

- merged safetensors: logits of the saved merged model vs base + adapter (PEFT, unmerged) on the same prompts;
- GGUF: loaded in llama.cpp; its tokenization of chat prompts equals ours; greedy continuations vs torch
  (F16: identical first K tokens; quantised: teacher-forced top-1 agreement where torch's top-2 are ≥ 1 logit apart); the chat template \
stored in
  the file, and llama.cpp's own rendering of a conversation, equal ours;
- Modelfile: its TEMPLATE, executed the way Ollama does, renders a conversation exactly as our template does.

Each check returns a dict {name, passed, summary, details...}; `passed` None means "not checked" (with why).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from core import llamacpp
from core.data.formats import load_dataset_file, resolve_data_path
from core.export.integrity import file_problems
from core.export.ollama import ollama_messages, parse_modelfile, render_go_template
from core.generation import eos_token_ids, greedy_continuation_ids

# Merged vs base + adapter: the saved 16-bit weights differ from the fp32 sum by rounding only.
MERGE_TOP1_MIN = 0.99  # next-token argmax agreement over every prompt position
MERGE_RESIDUAL_MAX = 0.10  # mean |merged - (base+adapter)| must be under 10 % of the adapter's own effect
TIE_MARGIN = 0.02  # logits closer than this are a tie at 16-bit precision (llama.cpp rounds activations to fp16)
QUANT_WARN = 0.5  # K-quants: below this next-token agreement the check carries a warning
# Q8_0 / K-quants: where torch's two best logits are closer than this (odds under e : 1) the quantiser may flip the
# choice faithfully. Measured as the check's margin_shift_* (how far llama.cpp moved torch's top-2 margin), Q8_0 at
# the 95th percentile: 0.36 on the embedded model, 0.74 with a random LoRA on it, 1.03 on a 5-layer shallow student.
# A wrong converter (mapping, permutation, quantiser) flips decisions of several logits.
QUANT_TIE_MARGIN = 1.0
MERGE_ABS_TOL = {"float32": 1e-3, "float16": 0.05, "bfloat16": 0.35}  # max |Δ logit| stated per dtype (mean over positions)
PROBE_CONVERSATION = [
    {"role": "system", "content": "You are a careful support assistant."},
    {"role": "user", "content": "My printer says paper jam but there is no paper inside."},
    {"role": "assistant", "content": "Open the rear tray and check the rollers."},
    {"role": "user", "content": "Done. What next?"},
]
FALLBACK_PROMPTS = ("What is the capital of France?", "Write a haiku about autumn.", "Explain what a GPU does in one sentence.",
                    "List three prime numbers.")


def check(name: str, passed: bool | None, summary: str, **details: Any) -> dict:
    return {"name": name, "passed": passed, "summary": summary, **details}


def integrity_check(path: Path) -> dict:
    problems = file_problems(path)
    return check("file integrity", not problems, problems[0] if problems else "headers and sizes are consistent", problems=problems)


# --------------------------------------------------------------------------- prompts


def render(tokenizer: Any, template: str | None, messages: list[dict], add_generation_prompt: bool = True) -> str:
    return tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False, add_generation_prompt=add_generation_prompt)


def validation_prompts(tokenizer: Any, template: str | None, dataset: str | None, n: int, system: str = "") -> list[str]:
    """Chat prompts to compare on: the first `n` conversations of the run's data (up to their last answer), else generic ones
    (opened by `system`, the training rows' system prompt, when there is one: the model is asked as Chat asks it)."""
    conversations: list[list[dict]] = []
    if dataset:
        try:
            rows = load_dataset_file(resolve_data_path(dataset)).rows
        except Exception:  # noqa: BLE001 - the run's data may have moved: fall back to generic prompts
            rows = []
        for row in rows:
            messages = row.get("messages") if isinstance(row, dict) else None
            if messages and messages[-1]["role"] == "assistant" and len(messages) > 1:
                conversations.append([{"role": m["role"], "content": m["content"]} for m in messages[:-1]])
            if len(conversations) >= n:
                break
    for prompt in FALLBACK_PROMPTS:
        if len(conversations) >= n:
            break
        conversations.append(([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}])
    if template or getattr(tokenizer, "chat_template", None):
        return [render(tokenizer, template, c) for c in conversations[:n]]
    return [c[-1]["content"] for c in conversations[:n]]


def encode(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=True)["input_ids"])


def stop_ids(tokenizer: Any, model: Any) -> set[int]:
    return set(eos_token_ids(model, tokenizer))


# --------------------------------------------------------------------------- merged


def source_logits(loaded: Any, prompt_ids: list[list[int]], has_adapter: bool) -> list[tuple[Any, Any]]:
    """(logits of the model being exported, logits of its base without the adapter or None) per prompt, in float32."""
    import torch

    pairs = []
    with torch.inference_mode():
        for ids in prompt_ids:
            x = torch.tensor([ids])
            tuned = loaded.model(x).logits[0].float()
            base = None
            if has_adapter:
                with loaded.model.disable_adapter():
                    base = loaded.model(x).logits[0].float()
            pairs.append((tuned, base))
    return pairs


def merged_check(references: list[tuple[Any, Any]], merged_model: Any, prompt_ids: list[list[int]], dtype: str) -> dict:
    """Saved merged weights vs the unmerged source (and vs the base, to see that the adapter did something)."""
    import torch

    tolerance = MERGE_ABS_TOL.get(dtype, 0.35)
    diffs, effects, agree, positions, max_diff, raw_agree, all_positions = [], [], 0, 0, 0.0, 0, 0
    with torch.inference_mode():
        for (tuned, base), ids in zip(references, prompt_ids):
            merged = merged_model(torch.tensor([ids])).logits[0].float()
            diffs.append((merged - tuned).abs().mean().item())
            if base is not None:
                effects.append((base - tuned).abs().mean().item())
            max_diff = max(max_diff, (merged - tuned).abs().max().item())
            same = merged.argmax(-1) == tuned.argmax(-1)
            # a position whose two best logits are closer than the dtype's rounding can flip either way and stay faithful
            # (large random vocabularies have many); agreement is judged where the source decides by more than that
            top2 = tuned.topk(2, dim=-1).values
            decided = (top2[:, 0] - top2[:, 1]) >= tolerance
            agree += int((same & decided).sum())
            positions += int(decided.sum())
            raw_agree += int(same.sum())
            all_positions += len(ids)
    mean_diff = sum(diffs) / len(diffs)
    top1 = agree / positions if positions else 1.0
    name = "merged = base + adapter" if effects else "saved = source"
    details = dict(mean_abs_diff=mean_diff, max_abs_diff=max_diff, top1_agreement=top1, tolerance=tolerance, decided_positions=positions,
                   raw_top1_agreement=raw_agree / max(1, all_positions))
    residual_ok, residual_text = True, ""
    if effects:
        effect = sum(effects) / len(effects)
        if effect <= 1e-6:
            return check(name, False, "the adapter changes nothing (all LoRA B matrices zero?): nothing was learned to merge",
                         adapter_effect=effect, **details)
        residual = mean_diff / effect
        residual_ok = residual <= MERGE_RESIDUAL_MAX
        residual_text = f"; residual {residual:.1%} of the adapter's effect (≤ {MERGE_RESIDUAL_MAX:.0%})"
        details.update(adapter_effect=effect, residual_ratio=residual)
    passed = top1 >= MERGE_TOP1_MIN and residual_ok and mean_diff <= tolerance
    summary = (f"mean |Δlogit| {mean_diff:.4f} (tolerance {tolerance} for {dtype}), max {max_diff:.3f}; next-token agreement "
               f"{top1:.1%} (≥ {MERGE_TOP1_MIN:.0%}) on the {positions} of {all_positions} positions the source decides by ≥ {tolerance} "
               f"({raw_agree / max(1, all_positions):.1%} over all){residual_text}")
    return check(name, passed, summary, **details)


# --------------------------------------------------------------------------- GGUF


def torch_references(model: Any, tokenizer: Any, prompts: list[str], k: int) -> list[dict]:
    import torch

    refs = []
    for text in prompts:
        ids = encode(tokenizer, text)
        continuation = greedy_continuation_ids(model, tokenizer, ids, k)
        with torch.inference_mode():
            logits = model(torch.tensor([ids + continuation])).logits[0, len(ids) - 1:].float()
        top2 = logits.topk(2, dim=-1)
        margins = (top2.values[:, 0] - top2.values[:, 1])[: len(continuation)]
        refs.append({"text": text, "ids": ids, "continuation": continuation,
                     "margins": [round(float(m), 5) for m in margins],
                     "runner_up": [int(i) for i in top2.indices[: len(continuation), 1]]})
    return refs


def gguf_checks(path: Path, references: list[dict], tokenizer: Any, template: str | None, *, quantized: bool,
                min_agreement: float | None) -> list[dict]:
    """min_agreement None: the agreement is reported (a warning below QUANT_WARN), not required."""
    """Load the GGUF in llama.cpp and compare it with the torch references."""
    if not llamacpp.available():
        return [check("loads in llama.cpp", None, llamacpp.missing_note())]
    checks: list[dict] = []
    try:
        with llamacpp.open_gguf(path, n_ctx=_context_for(references), logits_all=True) as llm:
            meta = llamacpp.metadata(llm)
            checks.append(check("loads in llama.cpp", True, f"arch {meta.get('general.architecture', '?')}, "
                                f"vocabulary of {llm.n_vocab()} tokens, context {llm.n_ctx()}"))
            checks.append(_tokenizer_check(llm, references, tokenizer, meta))
            stops = llamacpp.eos_ids(llm) | stop_ids(tokenizer, None)
            checks.append(_agreement_check(llm, references, stops, quantized=quantized, min_agreement=min_agreement))
            add_bos = str(meta.get("tokenizer.ggml.add_bos_token", "false")).lower() == "true"
            checks.extend(template_checks(meta.get("tokenizer.chat_template"), tokenizer, template, add_bos))
    except ValueError as exc:
        checks.append(check("loads in llama.cpp", False, str(exc)))
    return checks


def _context_for(references: list[dict]) -> int:
    longest = max((len(r["ids"]) + len(r["continuation"]) for r in references), default=64)
    return max(256, 1 << (longest + 16).bit_length())


def _tokenizer_check(llm: Any, references: list[dict], tokenizer: Any, meta: dict) -> dict:
    add_bos = str(meta.get("tokenizer.ggml.add_bos_token", "false")).lower() == "true"
    mismatches = [i for i, r in enumerate(references) if llamacpp.tokenize(llm, r["text"], add_bos=add_bos) != r["ids"]]
    return check("tokenizer matches", not mismatches,
                 f"llama.cpp splits all {len(references)} chat prompts into the same ids as the training tokenizer" if not mismatches
                 else f"{len(mismatches)} of {len(references)} prompts tokenize differently in llama.cpp (pre-tokenizer / special tokens)",
                 mismatched_prompts=mismatches)


def _teacher_forced(llm: Any, ref: dict) -> tuple[list[int], list[float]]:
    """llama.cpp's next-token choice along torch's greedy continuation, and how far it moved each of torch's
    top-2 margins (the runtime's, i.e. the quantiser's, noise on a decision)."""
    expected = ref["continuation"]
    scores = llamacpp.next_token_scores(llm, ref["ids"] + expected)[len(ref["ids"]) - 1: -1]
    choices = [int(i) for i in scores.argmax(axis=-1)]
    shifts = [abs(float(row[best] - row[second]) - margin)
              for row, best, second, margin in zip(scores, expected, ref.get("runner_up", []), ref["margins"])]
    return choices, shifts


def _agreement_check(llm: Any, references: list[dict], stops: set[int], *, quantized: bool, min_agreement: float | None) -> dict:
    same_prefix, agreements, samples, shifts = [], [], [], []
    decided = decided_agree = tie_flips = 0
    for ref in references:
        expected = ref["continuation"]
        got = llamacpp.greedy(llm, ref["ids"], max(1, len(expected)) if expected else 1, stops)
        same_prefix.append(next((i for i, (a, b) in enumerate(zip(expected, got)) if a != b), min(len(expected), len(got))))
        samples.append({"torch": expected, "llama_cpp": got})
        if not expected:
            continue
        choices, ref_shifts = _teacher_forced(llm, ref)
        shifts.extend(ref_shifts)
        agreements.append(sum(int(a == b) for a, b in zip(choices, expected)) / len(expected))
        for a, b, margin in zip(choices, expected, ref["margins"]):
            if margin >= QUANT_TIE_MARGIN:
                decided += 1
                decided_agree += int(a == b)
            else:
                tie_flips += int(a != b)
    agreement = sum(agreements) / len(agreements) if agreements else 1.0
    k = max((len(r["continuation"]) for r in references), default=0)
    details: dict = {"agreement": agreement, "identical_prefix": same_prefix, "tokens": k, "samples": samples[:2], "warning": "",
                     "decided_positions": decided, "decided_agreement": decided_agree / decided if decided else None,
                     "tie_flips": tie_flips}
    if shifts:
        ordered = sorted(shifts)
        details.update(margin_shift_mean=sum(ordered) / len(ordered), margin_shift_p95=ordered[int(0.95 * (len(ordered) - 1))],
                       margin_shift_max=ordered[-1])
    if quantized:
        passed, summary = _quantized_verdict(references, min_agreement, details)
    else:
        passed, summary = _f16_verdict(references, details)
    return check("greedy text vs torch", passed, summary, **details)


def _quantized_verdict(references: list[dict], min_agreement: float | None, details: dict) -> tuple[bool | None, str]:
    """A quantiser moves every logit a little: where torch's two best are closer than that, either choice is faithful.
    The rule is judged on the positions torch decides clearly; the raw rate over every position is reported beside it."""
    total = sum(len(r["continuation"]) for r in references)
    agreement, k, rate, decided = details["agreement"], details["tokens"], details["decided_agreement"], details["decided_positions"]
    rule = f"required ≥ {min_agreement:.0%}" if min_agreement is not None else "reported"
    if min_agreement is None and agreement < QUANT_WARN:
        details["warning"] = f"only {agreement:.0%} of next tokens agree with the 16-bit model: expect visibly different answers"
    raw = (f"{agreement:.1%} over all {total} positions of {len(references)} prompts × up to {k} tokens, "
           f"{details['tie_flips']} flip(s) at near-ties; identical greedy prefix {sum(details['identical_prefix'])}/{total} tokens")
    if not decided:
        passed = None if min_agreement is not None else True
        return passed, (f"not judged: at no position are torch's two best ≥ {QUANT_TIE_MARGIN} logits apart (the model is "
                        f"undecided everywhere, so any choice is faithful); next-token agreement {raw}")
    passed = rate >= min_agreement if min_agreement is not None else True
    return passed, (f"next-token agreement with torch {rate:.1%} on the {decided} positions torch decides by ≥ "
                    f"{QUANT_TIE_MARGIN} logits ({rule}); {raw}")


def _f16_verdict(references: list[dict], details: dict) -> tuple[bool, str]:
    """A 16-bit runtime cannot order two tokens whose logits differ by less than its rounding: such a tie is named,
    anything else is a real divergence."""
    same_prefix, k = details["identical_prefix"], details["tokens"]
    diverged = [(i, p, r["margins"][p]) for i, (p, r) in enumerate(zip(same_prefix, references)) if p < len(r["continuation"])]
    ties = [t for t in diverged if t[2] < TIE_MARGIN]
    details["ties"] = ties
    if not diverged:
        return True, f"greedy text identical to torch for the first {k} tokens of all {len(references)} prompts"
    if len(ties) == len(diverged):
        return True, (f"greedy text identical to torch (first {k} tokens) except at {len(ties)} exact tie(s): "
                      + "; ".join(f"prompt {i + 1} token {p + 1}, torch's two best {m:.3f} apart" for i, p, m in ties))
    return False, f"greedy text diverges from torch: identical prefixes {same_prefix} of {k} tokens"


def template_checks(stored: str | None, tokenizer: Any, template: str | None, add_bos: bool = False) -> list[dict]:
    """The template in the GGUF is ours, and llama.cpp's own renderer produces our text for a conversation."""
    ours = template or tokenizer.chat_template
    checks = [check("chat template stored", stored == ours,
                    "tokenizer.chat_template in the file is the template used in training" if stored == ours
                    else "the GGUF carries a different chat template than training used" if stored else "the GGUF has no chat template")]
    if not ours:
        return checks
    expected = render(tokenizer, ours, PROBE_CONVERSATION)
    native = llamacpp.render_native(stored or ours, PROBE_CONVERSATION)
    if native is None:
        checks.append(check("llama.cpp renders the template", None,
                            "llama.cpp has no built-in renderer for this template; Jinja-capable runners (llama-server --jinja, LM Studio) "
                            "use the stored one"))
        return checks
    # llama.cpp's built-in templates never write the BOS text: its tokenizer adds BOS (tokenizer.ggml.add_bos_token)
    bos = getattr(tokenizer, "bos_token", None) or ""
    warning = ""
    if bos and expected != native and expected.startswith(bos) and expected[len(bos):] == native:
        expected = expected[len(bos):]
        if not add_bos:
            warning = (f"the template writes {bos!r} as text at the start, which llama.cpp's built-in rendering leaves to the "
                       "tokenizer, and this GGUF does not add BOS: runners without Jinja start the prompt without it")
    same = native == expected
    # The stored template is the training one, so Jinja runners (llama-server's default, LM Studio, llama-cpp-python) prompt as
    # training did; llama.cpp's built-in renderer is its own approximation of a family (e.g. it puts Mistral-Nemo's system prompt
    # in the first user turn, the real template in the last), so a difference is a warning for runners without Jinja, not a
    # broken file.
    if not same:
        warning = ("runners without Jinja (llama-cli / llama-server without --jinja) use llama.cpp's built-in approximation of this "
                   "family's layout, which differs from the training template; use --jinja (the stored template) to prompt as training did"
                   + (f"; also: {warning}" if warning else ""))
    checks.append(check("llama.cpp renders the template", True if same else None,
                        "llama.cpp's built-in rendering of a 4-turn conversation equals ours" if same
                        else "llama.cpp's built-in rendering differs from ours (Jinja runners use the stored template)",
                        llama_cpp=native[:400], ours=expected[:400], warning=warning))
    return checks


# --------------------------------------------------------------------------- Modelfile


def modelfile_check(text: str, tokenizer: Any, template: str | None, add_bos: bool) -> dict:
    parsed = parse_modelfile(text)
    if not parsed["template"]:
        return check("Modelfile template", None, "no TEMPLATE written (see the Modelfile's comment)")
    bos = tokenizer.bos_token if add_bos and tokenizer.bos_token else ""
    failures = []
    for conversation in (PROBE_CONVERSATION, PROBE_CONVERSATION[1:]):  # what Ollama sends (its SYSTEM first), rendered by both
        ours = render(tokenizer, template, ollama_messages(conversation, parsed["system"]))
        ours = ours[len(bos):] if bos and ours.startswith(bos) else ours
        theirs = render_go_template(parsed["template"], ollama_messages(conversation, parsed["system"]))
        if theirs != ours:
            failures.append({"ours": ours[:400], "ollama": theirs[:400]})
    return check("Modelfile template", not failures,
                 "the TEMPLATE renders conversations with and without a system prompt exactly as the training template"
                 if not failures else "the TEMPLATE renders a conversation differently from the training template",
                 stops=parsed["stop"], failures=failures)
