"""Chat records: checking `messages` and rendering them into the text the model sees.

Two shapes of `messages` are read (DESIGN.md, "Input formats"):

- Vertex's: `[{"author": "user" | "assistant", "content": ...}]` with an optional per-row
  `context` (the system text). Checked exactly as Vertex's RLHF pipeline checks chat data:
  messages present and non-empty, the first author `user`, the last author `user` (the
  model writes the next reply), no empty author or content, authors only user/assistant.
- the `role` shape of Hugging Face chat templates and TRL: `[{"role": "system" | "user" |
  "assistant", "content": ...}]`, one optional leading system turn, user and assistant
  alternating, user first and last (Llama-2's template refuses anything else).

The system text of a conversation is the row's `context`, else its leading system turn,
else the run's `instruction` ("instruction is the default context", as Vertex).

Rendering (`render`) is the one place a conversation becomes text: the tokenizer's chat
template with the generation prompt when it has one, else Vertex's llama-2-chat layout
(Touvron et al. 2023, and Meta's reference `chat_completion`):
`<s>[INST] <<SYS>>\\n{context}\\n<</SYS>>\\n\\n{user} [/INST] {assistant} </s><s>[INST] {user} [/INST]`.
"""

from __future__ import annotations

import json

from rlhfkit.data_read import json_type
from rlhfkit.errors import RlhfkitError
from rlhfkit.io import visible

AUTHORS = ("user", "assistant")  # Vertex
ROLES = ("system", "user", "assistant")  # chat templates / TRL
B_INST, E_INST = "[INST]", "[/INST]"
B_SYS, E_SYS = "<<SYS>>\n", "\n<</SYS>>\n\n"


def check_messages(where: str, rec: dict, problems: list[str],
                   check_text=None) -> None:
    """Append a `path:line: ...` problem for everything wrong with `rec["messages"]` (and
    `rec["context"]`). `check_text(at, text)` returns a reason a text is unusable (control
    characters, ...) or None."""
    messages = rec["messages"]
    if not isinstance(messages, list) or not messages:
        problems.append(f"{where}: messages must be a non-empty list of "
                        '{"author", "content"} (or {"role", "content"}) objects')
        return
    vertex = isinstance(messages[0], dict) and "author" in messages[0]
    before = len(problems)
    if vertex:
        _check_vertex(where, messages, problems)
    else:
        _check_roles(where, messages, problems)
    if len(problems) == before and check_text:
        for i, m in enumerate(messages):
            reason = check_text(m["content"])
            if reason:
                problems.append(f"{where}: messages[{i}].content {reason}")
    _check_context(where, rec, problems, check_text,
                   has_system=not vertex and _is_turn(messages[0], "role")
                   and messages[0]["role"] == "system")


def _is_turn(m, key: str) -> bool:
    return isinstance(m, dict) and key in m and "content" in m


def _check_vertex(where: str, messages: list, problems: list[str]) -> None:
    for i, m in enumerate(messages):
        at = f"{where}: messages[{i}]"
        if not _is_turn(m, "author"):
            problems.append(f"{at} must be an object with author and content, got {show(m)}")
            return
        author, content = m["author"], m["content"]
        if not isinstance(author, str):
            problems.append(f"{at}.author must be a string, got {show(author)}")
        elif not author.strip():
            problems.append(f"{at}.author is empty")
        elif author not in AUTHORS:
            problems.append(f'{at}.author is {show(author)}; expected "user" or "assistant"')
        _check_content(at, content, problems)
    first, last = messages[0].get("author"), messages[-1].get("author")
    if first != "user" and first in AUTHORS:
        problems.append(f'{where}: messages[0].author must be "user" (the conversation '
                        "starts with the user)")
    if last != "user" and last in AUTHORS:
        problems.append(f'{where}: the last message\'s author must be "user" (the model '
                        "writes the next assistant reply)")


def _check_roles(where: str, messages: list, problems: list[str]) -> None:
    expected = "user"
    for i, m in enumerate(messages):
        at = f"{where}: messages[{i}]"
        if not _is_turn(m, "role"):
            problems.append(f"{at} must be an object with role (or author) and content, "
                            f"got {show(m)}")
            return
        role = m["role"]
        _check_content(at, m["content"], problems)
        if role == "system" and i == 0:
            continue
        if role not in ROLES or role != expected:
            why = ('"system" is allowed only as the first turn' if role == "system" else
                   f'expected "{expected}" (turns alternate user/assistant, user first)')
            problems.append(f"{at}.role is {show(role)}; {why}")
            return
        expected = "assistant" if role == "user" else "user"
    if expected == "user":  # the last turn was the assistant's, or there was only a system turn
        problems.append(f"{where}: messages must end with a user turn (the model writes the "
                        "next assistant reply)")


def _check_content(at: str, content, problems: list[str]) -> None:
    if not isinstance(content, str):
        problems.append(f"{at}.content must be a string, got {json_type(content)}")
    elif not content.strip():
        problems.append(f"{at}.content is empty")


def _check_context(where: str, rec: dict, problems: list[str], check_text,
                   has_system: bool) -> None:
    if "context" not in rec or rec["context"] is None:
        return
    context = rec["context"]
    if not isinstance(context, str):
        problems.append(f"{where}: context must be a string (the system text), "
                        f"got {show(context)}")
    elif has_system:
        problems.append(f"{where}: has both context and a system turn; give one of them")
    elif check_text and check_text(context):
        problems.append(f"{where}: context {check_text(context)}")


# -- rendering ------------------------------------------------------------------------------

def conversation(record: dict, instruction: str | None) -> tuple[str | None, list[dict]]:
    """(system text, turns as {"role", "content"}) of a checked chat record."""
    messages = record["messages"]
    turns = [{"role": m.get("role", m.get("author")), "content": m["content"]}
             for m in messages]
    system = record.get("context") or None
    if turns and turns[0]["role"] == "system":
        system, turns = turns[0]["content"], turns[1:]
    return system or instruction or None, turns


def llama2_chat(system: str | None, turns: list[dict]) -> str:
    """Vertex's layout for chat data when the tokenizer has no chat template (Meta's
    reference: contents stripped, the system block inside the first [INST])."""
    out = []
    for i, turn in enumerate(turns):
        content = turn["content"].strip()
        if turn["role"] == "user":
            if i == 0 and system:
                content = f"{B_SYS}{system.strip()}{E_SYS}{content}"
            out.append(f"<s>{B_INST} {content} {E_INST}")
        else:
            out.append(f" {content} </s>")
    return "".join(out)


def render(record: dict, instruction: str | None, tokenizer=None) -> str:
    """The prompt text of a checked chat record: the tokenizer's chat template (generation
    prompt added) when it has one, else `llama2_chat`.

    Templates that refuse a system turn (several do) get the system text in front of the
    first user turn instead, joined as `instruction + "\\n\\n\\n" + text` is elsewhere."""
    system, turns = conversation(record, instruction)
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        return llama2_chat(system, turns)
    attempts = []
    if system:
        attempts.append([{"role": "system", "content": system}, *turns])
        folded = [dict(t) for t in turns]
        folded[0]["content"] = f"{system}\n\n\n{folded[0]['content']}"
        attempts.append(folded)
    else:
        attempts.append(turns)
    error = None
    for messages in attempts:
        try:
            return tokenizer.apply_chat_template(messages, tokenize=False,
                                                 add_generation_prompt=True)
        except Exception as exc:  # noqa: BLE001 (a template is user code; say what it said)
            error = exc
    first = show(turns[0]["content"]) if turns else "[]"
    raise RlhfkitError(f"the tokenizer's chat template refuses the conversation starting "
                       f"{first}: {error}")


def show(value, width: int = 60) -> str:
    text = visible(json.dumps(value, ensure_ascii=False))
    return text if len(text) <= width else text[: width - 3] + "..."
