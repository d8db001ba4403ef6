"""An Ollama Modelfile whose TEMPLATE and stop tokens are the chat template the model was trained with.

"Gibberish in Ollama" is mostly a template mismatch, so the TEMPLATE is not guessed from a family name: the
training template (Jinja) is rendered on probe conversations, its anatomy (per-role prefix / suffix, the
generation prompt, a default system prompt it injects, the BOS it writes) is read off the text, checked by
re-rendering longer conversations, and written as an Ollama Go template. `render_go_template` then executes
that TEMPLATE text (the subset of Go's text/template we emit) the way Ollama does, so a test can compare it
with our Jinja rendering character for character.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

ROLES = ("system", "user", "assistant")
_S, _U1, _A1, _U2, _A2, _U3 = "\x01SYS\x01", "\x01U1\x01", "\x01A1\x01", "\x01U2\x01", "\x01A2\x01", "\x01U3\x01"


class TemplateNotMappable(ValueError):
    """The chat template does not have a per-message shape an Ollama TEMPLATE can express."""


@dataclass(frozen=True)
class TemplateAnatomy:
    start: str  # written once before the first message (often the BOS text)
    prefix: dict  # role -> text before its content
    suffix: dict  # role -> text after its content
    generation_prompt: str
    default_system: str  # the system prompt the template injects when there is none ("" = none)

    def as_dict(self) -> dict:
        return asdict(self)

    def render(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        """What the Jinja template renders, rebuilt from the anatomy (used to check the anatomy itself)."""
        if self.default_system and (not messages or messages[0]["role"] != "system"):
            messages = [{"role": "system", "content": self.default_system}] + list(messages)
        text = self.start + "".join(self.prefix[m["role"]] + m["content"] + self.suffix[m["role"]] for m in messages)
        return text + (self.generation_prompt if add_generation_prompt else "")


def _render(tokenizer: Any, template: str, messages: list[dict], add_generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False, add_generation_prompt=add_generation_prompt)


def _split(text: str, marker: str, what: str) -> tuple[str, str]:
    if text.count(marker) != 1:
        raise TemplateNotMappable(f"the template does not write the {what} exactly once")
    head, tail = text.split(marker)
    return head, tail


def read_anatomy(tokenizer: Any, template: str) -> TemplateAnatomy:
    """Per-role prefix / suffix of a chat template, read from renderings of probe conversations."""
    def render(messages, gen=False):
        try:
            return _render(tokenizer, template, messages, gen)
        except Exception as exc:  # noqa: BLE001 - templates raise for roles they refuse (e.g. Gemma: no system)
            raise TemplateNotMappable(f"the template refuses a probe conversation: {exc}") from None

    system = [{"role": "system", "content": _S}]
    user = system + [{"role": "user", "content": _U1}]
    both = user + [{"role": "assistant", "content": _A1}]
    one = render(system)
    start_and_prefix, system_suffix = _split(one, _S, "system message")
    two = render(user)
    if not two.startswith(one):
        raise TemplateNotMappable("a system message renders differently once a user turn follows it")
    user_prefix, user_suffix = _split(two[len(one):], _U1, "user message")
    three = render(both)
    if not three.startswith(two):
        raise TemplateNotMappable("a user turn renders differently once an assistant turn follows it")
    assistant_prefix, assistant_suffix = _split(three[len(two):], _A1, "assistant message")
    with_prompt = render(user, gen=True)
    if not with_prompt.startswith(two):
        raise TemplateNotMappable("the generation prompt is not appended after the last message")
    bos = getattr(tokenizer, "bos_token", None) or ""
    start = bos if bos and start_and_prefix.startswith(bos) else ""
    anatomy = TemplateAnatomy(
        start=start,
        prefix={"system": start_and_prefix[len(start):], "user": user_prefix, "assistant": assistant_prefix},
        suffix={"system": system_suffix, "user": user_suffix, "assistant": assistant_suffix},
        generation_prompt=with_prompt[len(two):],
        default_system=_default_system(render, start, start_and_prefix[len(start):], system_suffix, user_prefix),
    )
    _check_anatomy(anatomy, render)
    return anatomy


def _default_system(render, start: str, system_prefix: str, system_suffix: str, user_prefix: str) -> str:
    text = render([{"role": "user", "content": _U1}])
    head = text.split(_U1)[0]
    if head == start + user_prefix:
        return ""
    opening = start + system_prefix
    closing = system_suffix + user_prefix
    if head.startswith(opening) and head.endswith(closing) and len(head) >= len(opening) + len(closing):
        return head[len(opening): len(head) - len(closing)]
    raise TemplateNotMappable("without a system message the template writes something other than a system turn")


def _check_anatomy(anatomy: TemplateAnatomy, render) -> None:
    probes = [
        [{"role": "system", "content": _S}, {"role": "user", "content": _U1}, {"role": "assistant", "content": _A1},
         {"role": "user", "content": _U2}, {"role": "assistant", "content": _A2}, {"role": "user", "content": _U3}],
        [{"role": "user", "content": _U1}, {"role": "assistant", "content": _A1}, {"role": "user", "content": _U2}],
    ]
    for messages in probes:
        for gen in (True, False):
            if anatomy.render(messages, gen) != render(messages, gen):
                raise TemplateNotMappable("turns render differently depending on their position (e.g. a system prompt folded into the "
                                          "first user turn)")


# --------------------------------------------------------------------------- the Go template


def go_template(anatomy: TemplateAnatomy, *, include_start: bool) -> str:
    """An Ollama TEMPLATE (Go text/template over .Messages), one line of actions so no literal text is trimmed."""
    for text in [anatomy.start, anatomy.generation_prompt, *anatomy.prefix.values(), *anatomy.suffix.values()]:
        if "{{" in text or '"""' in text:
            raise TemplateNotMappable("the template's literal text contains '{{' or '\"\"\"', which a Modelfile cannot quote")
    branches = []
    for n, role in enumerate(ROLES):
        keyword = "if" if n == 0 else "else if"
        suffix = anatomy.suffix[role]
        tail = f"{{{{ if not $last }}}}{suffix}{{{{ end }}}}" if role == "assistant" else suffix
        branches.append(f'{{{{ {keyword} eq .Role "{role}" }}}}{anatomy.prefix[role]}{{{{ .Content }}}}{tail}')
    body = "".join(branches) + "{{ end }}"
    generation = f'{{{{ if and $last (ne .Role "assistant") }}}}{anatomy.generation_prompt}{{{{ end }}}}'
    start = anatomy.start if include_start else ""
    return (f"{start}{{{{ range $i, $_ := .Messages }}}}{{{{ $last := eq (len (slice $.Messages $i)) 1 }}}}"
            f"{body}{generation}{{{{ end }}}}")


def stop_sequences(anatomy: TemplateAnatomy, eos_token: str | None) -> list[str]:
    """End-of-turn marker, the start of a next turn, and the EOS text: Ollama stops on any of them."""
    candidates = [anatomy.suffix["assistant"].strip(), anatomy.prefix["user"].strip(), (eos_token or "").strip()]
    marker = re.match(r"<[^<>\s]+>", anatomy.prefix["user"].strip())
    if marker:  # "<|im_start|>user\n" -> also "<|im_start|>", so a turn of any role ends the answer
        candidates.append(marker.group(0))
    stops: list[str] = []
    for text in candidates:
        if text and text not in stops:
            stops.append(text)
    return stops


def modelfile(gguf_name: str, anatomy: TemplateAnatomy | None, *, eos_token: str | None, add_bos: bool,
              source_note: str = "", unmapped_reason: str = "", system: str = "", system_note: str = "") -> str:
    """The Modelfile text; without an anatomy, Ollama falls back to the template embedded in the GGUF.

    `system`: the system prompt the model's training rows used (core.chat.training_format), written as SYSTEM so Ollama
    asks the model the way it learned to answer; without one, the template's own default system prompt (if any)."""
    lines = [f"# Modelfile written by the Post-Training Workbench{(' — ' + source_note) if source_note else ''}",
             "# Create the model with:  ollama create <name> -f Modelfile", f"FROM ./{gguf_name}"]
    if '"""' in system:  # a SYSTEM block cannot hold its own closing quotes
        lines.append('# SYSTEM: the training system prompt contains """, which a Modelfile cannot quote; paste it into your requests')
        system = ""
    system_lines = [f"# SYSTEM: {system_note or 'the system prompt of the training rows'}", f'SYSTEM """{system}"""'] if system else []
    if anatomy is None:
        lines.append(f"# TEMPLATE not written: {unmapped_reason}. Ollama reads tokenizer.chat_template from the GGUF instead.")
        return "\n".join(lines + system_lines) + "\n"
    # llama.cpp adds BOS itself when the GGUF says so; writing it in the template too would double it.
    lines.append(f'TEMPLATE """{go_template(anatomy, include_start=not add_bos)}"""')
    lines += system_lines
    if not system and anatomy.default_system:
        lines.append(f'SYSTEM """{anatomy.default_system}"""')
    for stop in stop_sequences(anatomy, eos_token):
        lines.append(f'PARAMETER stop "{_quote(stop)}"')
    return "\n".join(lines) + "\n"


def _quote(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def parse_modelfile(text: str) -> dict:
    """FROM / TEMPLATE / SYSTEM / PARAMETER stop of a Modelfile (the instructions we write)."""
    result: dict = {"from": None, "template": None, "system": "", "stop": []}
    for key, body in re.findall(r'^(TEMPLATE|SYSTEM) """(.*?)"""', text, flags=re.S | re.M):
        result[key.lower()] = body
    match = re.search(r"^FROM (.+)$", text, flags=re.M)
    result["from"] = match.group(1).strip() if match else None
    for value in re.findall(r'^PARAMETER stop "((?:[^"\\]|\\.)*)"', text, flags=re.M):
        result["stop"].append(value.encode().decode("unicode_escape"))
    return result


def ollama_messages(messages: list[dict], system: str) -> list[dict]:
    """Ollama puts the Modelfile's SYSTEM first when the conversation has no system message."""
    if system and not any(m["role"] == "system" for m in messages):
        return [{"role": "system", "content": system}] + list(messages)
    return list(messages)


# --------------------------------------------------------------------------- a Go-template interpreter (our subset)

_ACTION = re.compile(r"\{\{-?\s*(.*?)\s*-?\}\}", re.S)


def render_go_template(template: str, messages: list[dict]) -> str:
    """Execute a TEMPLATE of the form `go_template` writes: range over .Messages with $last, if / else if / else
    on eq / ne / and / not, and .Role / .Content. Anything else raises, so an unexpected template is not 'passed'."""
    tokens: list[tuple[str, str]] = []
    position = 0
    for match in _ACTION.finditer(template):
        if match.start() > position:
            tokens.append(("text", template[position: match.start()]))
        tokens.append(("action", match.group(1)))
        position = match.end()
    if position < len(template):
        tokens.append(("text", template[position:]))
    tree, rest = _parse(tokens, 0)
    if rest != len(tokens):
        raise ValueError("unbalanced {{ end }} in the template")
    out: list[str] = []
    _execute(tree, {"messages": messages, "dot": None, "vars": {}}, out)
    return "".join(out)


def _parse(tokens, index, stop=("end",)):
    nodes = []
    while index < len(tokens):
        kind, value = tokens[index]
        if kind == "text":
            nodes.append(("text", value))
            index += 1
            continue
        head = value.split()[0] if value.split() else ""
        if head in ("end", "else"):
            return nodes, index
        if head in ("if", "range"):
            node, index = _parse_block(tokens, index)
            nodes.append(node)
            continue
        nodes.append(("expr", value))
        index += 1
    return nodes, index


def _parse_block(tokens, index):
    _, value = tokens[index]
    head, _, rest = value.partition(" ")
    if head == "range":
        body, index = _parse(tokens, index + 1)
        if tokens[index][1] != "end":
            raise ValueError("range without end")
        return ("range", rest.strip(), body), index + 1
    branches = []
    condition = rest.strip()
    index += 1
    while True:
        body, index = _parse(tokens, index)
        branches.append((condition, body))
        _, closing = tokens[index]
        if closing == "end":
            return ("if", branches), index + 1
        if closing == "else":
            condition = None
        elif closing.startswith("else if "):
            condition = closing[len("else if "):].strip()
        else:
            raise ValueError(f"unexpected {{{{ {closing} }}}}")
        index += 1


def _execute(nodes, scope, out) -> None:
    for node in nodes:
        if node[0] == "text":
            out.append(node[1])
        elif node[0] == "expr":
            value = _evaluate(node[1], scope)
            if value is not None and not isinstance(value, bool):
                out.append(str(value))
        elif node[0] == "if":
            for condition, body in node[1]:
                if condition is None or _truthy(_evaluate(condition, scope)):
                    _execute(body, scope, out)
                    break
        elif node[0] == "range":
            match = re.fullmatch(r"\$(\w+),\s*\$(\w*)\s*:=\s*\.Messages", node[1])
            if not match:
                raise ValueError(f"unsupported range {node[1]!r}")
            for i, message in enumerate(scope["messages"]):
                inner = {**scope, "dot": message, "vars": {**scope["vars"], match.group(1): i}}
                _execute(node[2], inner, out)


def _truthy(value) -> bool:
    return bool(value)


def _evaluate(expr: str, scope):
    expr = expr.strip()
    assign = re.fullmatch(r"\$(\w+)\s*:=\s*(.+)", expr, flags=re.S)
    if assign:
        scope["vars"][assign.group(1)] = _evaluate(assign.group(2), scope)
        return None
    return _call(_tokenize_expr(expr), scope)


def _tokenize_expr(expr: str) -> list:
    """Nested lists for parentheses, strings kept whole."""
    stack: list[list] = [[]]
    for token in re.findall(r'"(?:[^"\\]|\\.)*"|\(|\)|[^\s()]+', expr):
        if token == "(":
            stack.append([])
        elif token == ")":
            group = stack.pop()
            stack[-1].append(group)
        else:
            stack[-1].append(token)
    return stack[0]


def _value(token, scope):
    if isinstance(token, list):
        return _call(token, scope)
    if token.startswith('"'):
        return token[1:-1].encode().decode("unicode_escape")
    if token == ".Role":
        return scope["dot"]["role"]
    if token == ".Content":
        return scope["dot"]["content"]
    if token == "$.Messages":
        return scope["messages"]
    if token.startswith("$"):
        return scope["vars"][token[1:]]
    if re.fullmatch(r"-?\d+", token):
        return int(token)
    raise ValueError(f"unsupported value {token!r}")


def _call(tokens: list, scope):
    if len(tokens) == 1:
        return _value(tokens[0], scope)
    name, args = tokens[0], tokens[1:]
    values = [_value(a, scope) for a in args]
    if name == "eq":
        return values[0] == values[1]
    if name == "ne":
        return values[0] != values[1]
    if name == "and":
        return all(_truthy(v) for v in values)
    if name == "or":
        return any(_truthy(v) for v in values)
    if name == "not":
        return not _truthy(values[0])
    if name == "len":
        return len(values[0])
    if name == "slice":
        return values[0][values[1]:] if len(values) == 2 else values[0][values[1]: values[2]]
    raise ValueError(f"unsupported function {name!r}")
