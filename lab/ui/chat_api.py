"""The Chat tab's endpoints for programs: /chat (stateless, streamed), /chat_structured (the parsed JSON or tool
calls) and /model_info. Unlike the page's events they raise a user error, so a gradio_client program gets the
sentence as its exception.
"""

from __future__ import annotations

import gradio as gr

from lab.chat.conversation import Conversation, parse_history
from lab.errors import LabError
from lab.interface import SamplingParams
from lab.models.manager import ModelManager
from lab.space import gpu
from lab.ui.chat_reply import Replies
from lab.ui.chat_tools import call_of
from lab.ui.common import PAGE_STREAMS

DEFAULTS = SamplingParams()  # Qwen2.5-Instruct's own sampling defaults
GPU_SECONDS = 120  # ZeroGPU: how long one reply may hold the GPU


def build_api(manager: ModelManager, replies: Replies, default_system: str) -> None:
    """/chat, /chat_structured and /model_info: stateless endpoints for programs, which raise the error."""

    def api_reply(message: str, history, system_prompt: str, values: tuple, request: gr.Request | None):
        """Stream a reply for a program: yields the text so far, then the conversation it ended."""
        if not message or not message.strip():
            raise gr.Error("The message is empty.")
        try:
            system_in_history, messages = parse_history(history)
            params, shape = replies.check(values)
            conv = Conversation(messages + [{"role": "user", "content": message}])
            system_prompt = system_in_history if system_in_history is not None else system_prompt
            session = request.session_hash if request else f"api-{id(conv)}"
            for text, _ in replies.chunks(conv, system_prompt, params, shape, session):
                yield text, None  # still streaming: the reply as it grows
        except LabError as e:
            raise gr.Error(str(e)) from None
        yield conv.stats[len(conv.messages) - 1].get("raw", conv.messages[-1]["content"]), conv

    @gpu(duration=GPU_SECONDS)
    def chat(message: str, history: list[dict] | None = None, system_prompt: str = default_system,
             temperature: float = DEFAULTS.temperature, top_p: float = DEFAULTS.top_p, top_k: int = DEFAULTS.top_k,
             repetition_penalty: float = DEFAULTS.repetition_penalty, max_new_tokens: int = DEFAULTS.max_new_tokens,
             seed: int = -1, json_mode: bool = False, json_schema: str = "", tools: str = "",
             request: gr.Request = None) -> str:
        """Reply to `message` after `history` ([{"role", "content"}, ...]); streams the reply so far.

        A system message first in `history` replaces `system_prompt`. A seed >= 0 makes the reply
        reproducible; the oldest turns are dropped if the conversation does not fit the context.
        `json_mode` / `json_schema` constrain the reply to JSON (matching the schema); `tools` (JSON,
        OpenAI function format) are offered to the model. /chat_structured returns the parsed results."""
        values = (temperature, top_p, top_k, repetition_penalty, max_new_tokens, seed, json_mode, json_schema, tools)
        for text, _ in api_reply(message, history, system_prompt, values, request):
            yield text

    gr.api(chat, api_name="chat", concurrency_id="chat", concurrency_limit=PAGE_STREAMS)

    @gpu(duration=GPU_SECONDS)
    def chat_structured(message: str, history: list[dict] | None = None, system_prompt: str = default_system,
                        json_mode: bool = False, json_schema: str = "", tools: str = "",
                        temperature: float = DEFAULTS.temperature, top_p: float = DEFAULTS.top_p,
                        top_k: int = DEFAULTS.top_k, repetition_penalty: float = DEFAULTS.repetition_penalty,
                        max_new_tokens: int = DEFAULTS.max_new_tokens, seed: int = -1,
                        request: gr.Request = None) -> dict:
        """Like /chat, but returns what the reply holds: {"text": the raw reply, "content": its text without
        tool-call blocks, "json": {"parses", "valid", "errors", "parsed"} in JSON mode, "tool_calls": calls in
        OpenAI's format (arguments as a JSON string), "problems": malformed calls, "stats": tokens and timing}.
        Send a tool's result back as a {"role": "tool", "content": ...} message after the assistant message
        {"role": "assistant", "content": ..., "tool_calls": [...]} in `history`."""
        values = (temperature, top_p, top_k, repetition_penalty, max_new_tokens, seed, json_mode, json_schema, tools)
        text, conv = "", None
        for text, conv in api_reply(message, history, system_prompt, values, request):
            pass
        reply, stats = conv.messages[-1], dict(conv.stats[len(conv.messages) - 1])
        check = stats.pop("json", None)
        calls = [call_of(c).to_openai() for c in reply.get("tool_calls") or []]
        return {"text": text, "content": reply["content"], "json": check, "tool_calls": calls,
                "problems": stats.pop("tool_problems", []), "stats": stats}

    gr.api(chat_structured, api_name="chat_structured", concurrency_id="chat", concurrency_limit=PAGE_STREAMS)

    def model_info_api() -> dict:
        """The loaded model: name, source, quantization, device, context length and weight memory."""
        return manager.model.info.to_dict() if manager.loaded else {}

    gr.api(model_info_api, api_name="model_info")
