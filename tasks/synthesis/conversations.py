"""Multi-turn conversations (METHOD.md, "instructions"): the persona's prompt is the first user turn;
then, turn by turn, an assistant answers the conversation so far and the persona writes its next
message, for N user turns.

Each half-turn is a stage of its own over the conversations (assistant_1, user_2, assistant_2, ...):
a turn needs the previous one's answer, and a stage per half-turn checkpoints each, so a killed run
resumes at the half-turn it was in. The assistant may be another model on the same endpoint
(`assistant_model`). A reply that is empty or was cut off at max_tokens quarantines the
conversation with its reason.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from personahub.tasks.llm.requests import ChatRequest, ChatResult
from personahub.tasks.llm.stage import LLMStage, Outcome
from personahub.tasks.synthesis.stage import ITEM_SCHEMA, REJECT_SCHEMA, reject

ROLES = ("assistant", "user")


def conversation_of(row: Mapping[str, Any]) -> list[dict[str, str]]:
    """The conversation so far: stored, or the item's prompt as its first user turn."""
    if row.get("conversation"):
        return json.loads(row["conversation"])
    return [{"role": "user", "content": row["text"]}]


def transcript(conversation: list[dict[str, str]]) -> str:
    return "\n\n".join(f"{'Person' if m['role'] == 'user' else 'Assistant'}: {m['content']}" for m in conversation)


class ConversationTurn(LLMStage):
    """One half-turn. Parameters (hashed into the checkpoint): mode (assistant or user: the
    template, prompts/conversation/<mode>.yaml), template_ref, sampling, model, and the input's digest."""

    name = "conversation-turn"
    template_task = "conversation"
    default_mode = "assistant"
    columns = ITEM_SCHEMA.names
    outputs = {"data": ITEM_SCHEMA}
    quarantine = REJECT_SCHEMA

    def __init__(self, params: Mapping[str, Any]):
        super().__init__(params)
        self.role = self.template.mode
        if self.role not in ROLES:
            raise ValueError(f"a conversation turn is one of {ROLES}, not {self.role!r}")

    def requests(self, row: dict[str, Any]) -> list[ChatRequest]:
        conversation = conversation_of(row)
        if self.role == "assistant":
            system = [{"role": "system", "content": self.template.system.strip()}] if self.template.system.strip() else []
            messages = system + conversation
        else:
            messages = self.template.render(persona=row["persona"], transcript=transcript(conversation))
        return [ChatRequest(messages=messages, template=self.template.ref, params=self.sampling)]

    def reason(self, result: ChatResult) -> str | None:
        if result.error is not None:
            return self.llm_error(result)
        if result.finish_reason == "length":
            return "truncated"
        if not (result.text or "").strip():
            return "empty_reply"
        return None

    def parse(self, row: dict[str, Any], results: list[ChatResult]) -> Outcome:
        outcome = Outcome(rows_in=1)
        result = results[0]
        reason = self.reason(result)
        if reason is not None:
            outcome.rejects.append(reject(row, row["use_case"], f"conversation-{self.role}", reason, result.text,
                                          result.model, self.template.ref))
            return outcome
        conversation = conversation_of(row) + [{"role": self.role, "content": result.text.strip()}]
        outcome.keep("data", {**row, "conversation": json.dumps(conversation, ensure_ascii=False)})
        return outcome
