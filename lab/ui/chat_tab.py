"""The Chat tab: streaming replies, Stop, regenerate, undo, edit, clear, export, system-prompt
presets, sampling controls, per-reply stats and the model panel.

Programs reach every action by a stable api_name (gradio_client): `/chat` is stateless (message,
history, system prompt and parameters in; the reply out, streamed); `/chat_structured` is the same
with JSON mode or tools, and returns the parsed object or the tool calls; `/send`, `/regenerate`,
`/undo`, `/stop`, `/clear`, `/tool_result` and `/export` drive a session like the page does;
`/model_info` and `/load_model` concern the model.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import tempfile
import time
from pathlib import Path

import gradio as gr

from lab.chat.conversation import (
    Conversation,
    dropped_note,
    export_conversation,
    export_json,
    fit_to_context,
    format_stats,
    parse_history,
    sampling_from_ui,
)
from lab.chat.presets import system_presets
from lab.chat.tools import tool_message
from lab.errors import LabError
from lab.interface import ReplyStats, SamplingParams, lone_surrogate
from lab.models.manager import LoadRequest, ModelManager
from lab.models.registry import QUANTS, REGISTRY
from lab.space import gpu
from lab.ui.chat_tools import ReplyShape, build_panels, build_settings, call_of, display, panels
from lab.ui.common import STREAM_INTERVAL_S, SessionCancels, whole_number, form_number

DEFAULT_PRESET = "Qwen default"
CUSTOM = "Custom"
DEFAULTS = SamplingParams()  # Qwen2.5-Instruct's own sampling defaults
GPU_SECONDS = 120  # ZeroGPU: how long one reply may hold the GPU (a Space owner can lower max new tokens)
STATS_HEADERS = ["#", "prompt tok", "completion tok", "first token ms", "tok/s", "GPU peak GiB", "seed", "finish"]


def stats_rows(conv: Conversation) -> list[list]:
    rows = []
    for n, (_, s) in enumerate(sorted(conv.stats.items()), start=1):
        rows.append([
            n, s["prompt_tokens"], s["completion_tokens"],
            None if s["ttft_s"] is None else round(s["ttft_s"] * 1000),
            None if s["decode_tokens_per_s"] is None else round(s["decode_tokens_per_s"], 1),
            None if s["gpu_mem_peak_gib"] is None else round(s["gpu_mem_peak_gib"], 2),
            s["seed"], s["finish_reason"],
        ])
    return rows


def edited_text(value) -> str:
    """The text of an edited message, whatever shape Gradio hands it in."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        return value.get("text") or value.get("content") or ""
    if isinstance(value, list):
        return "".join(edited_text(v) for v in value)
    return str(value)


def build_chat_tab(manager: ModelManager) -> None:
    presets = system_presets()
    cancels = SessionCancels()

    def model_markdown() -> str:
        if not manager.loaded:
            return "**No model loaded.**"
        info = manager.model.info
        return "\n\n".join([f"**Model:** {info.summary()}"] + [f"⚠️ {note}" for note in info.notes])

    # ---- layout -------------------------------------------------------------------------
    conv_state = gr.State(Conversation())
    with gr.Row():
        with gr.Column(scale=3):
            model_info = gr.Markdown(model_markdown(), elem_id="model-info")
            chatbot = gr.Chatbot(
                elem_id="chatbot", label="Conversation", show_label=False, height=540, editable="user",
                buttons=["copy", "copy_all"],
                latex_delimiters=[{"left": "$$", "right": "$$", "display": True},
                                  {"left": "$", "right": "$", "display": False}],
                placeholder="Ask anything, in any language. Markdown, code and math render here.",
            )
            with gr.Row():
                message = gr.Textbox(show_label=False, placeholder="Message (Enter sends, Shift+Enter for a new line)",
                                     lines=1, max_lines=12, scale=8, elem_id="chat-input", autofocus=True)
                with gr.Column(scale=1, min_width=110):
                    send_btn = gr.Button("Send", variant="primary", elem_id="send-btn")
                    stop_btn = gr.Button("Stop", variant="stop", elem_id="stop-btn")
            with gr.Row():
                regen_btn = gr.Button("Regenerate", size="sm", elem_id="regen-btn")
                undo_btn = gr.Button("Undo", size="sm", elem_id="undo-btn")
                clear_btn = gr.Button("Clear", size="sm", elem_id="clear-btn")
                export_btn = gr.Button("Export JSON", size="sm", elem_id="export-btn")
            stats_md = gr.Markdown("", elem_id="reply-stats")
            json_panel, json_check, json_view, tool_panel, calls_md, tool_result, tool_send = build_panels()
            export_file = gr.File(label="Conversation export", visible=False, elem_id="export-file")
            with gr.Accordion("Stats of every reply", open=False):
                stats_table = gr.Dataframe(headers=STATS_HEADERS, value=[], interactive=False, elem_id="stats-table")
        with gr.Column(scale=1, min_width=300):
            with gr.Accordion("System prompt", open=True):
                preset = gr.Dropdown([*presets, CUSTOM], value=DEFAULT_PRESET, label="Preset", elem_id="preset")
                system = gr.Textbox(presets[DEFAULT_PRESET], label="System prompt (editable)", lines=4,
                                    max_lines=16, elem_id="system-prompt")
            with gr.Accordion("Sampling", open=True):
                temperature = gr.Slider(0, 2, value=DEFAULTS.temperature, step=0.05, label="Temperature (0 = greedy)")
                top_p = gr.Slider(0.05, 1, value=DEFAULTS.top_p, step=0.05, label="Top-p")
                top_k = gr.Slider(0, 200, value=DEFAULTS.top_k, step=1, label="Top-k (0 = off)")
                rep = gr.Slider(0.8, 2, value=DEFAULTS.repetition_penalty, step=0.01, label="Repetition penalty")
                max_new = gr.Slider(16, 8192, value=1024, step=16, label="Max new tokens", elem_id="max-new-tokens")
                seed = whole_number(-1, precision=0, label="Seed (-1 = new each reply; the one used is shown)",
                                 elem_id="seed")
            json_mode, json_schema, tools_box = build_settings()
            with gr.Accordion("Model", open=False):
                current = manager.request or LoadRequest()
                model_name = gr.Dropdown(list(REGISTRY), value=manager.model.info.name if manager.loaded else None,
                                         allow_custom_value=True, label="Model (name, Hub id or local path)")
                quant = gr.Dropdown(list(QUANTS), value=current.quant, label="Quantization")
                context = whole_number(current.context, precision=0, minimum=0,
                                    label="Context tokens (empty: the model's own; more: YaRN)")
                load_btn = gr.Button("Load", elem_id="load-btn")
    settings = [temperature, top_p, top_k, rep, max_new, seed, json_mode, json_schema, tools_box]
    outputs = [chatbot, conv_state, message, stats_md, stats_table]
    panel_outputs = [json_panel, json_check, json_view, tool_panel, calls_md]

    # ---- callbacks ----------------------------------------------------------------------
    def stream_reply(conv: Conversation, system_prompt: str, params, shape: ReplyShape, key: str):
        """Stream a reply to the conversation as it stands (its last message is the user's or a tool result)."""
        model = manager.model
        if lone_surrogate([system_prompt, conv.messages]):
            raise LabError("The conversation holds text that is not valid Unicode (a lone surrogate); remove it.")
        tools = shape.tools or None
        fitted = fit_to_context(system_prompt, conv.messages, lambda m: model.count_chat_tokens(m, tools),
                                model.info.context_length, params.max_new_tokens)
        event = cancels.start(key)
        text, stats, last = "", None, 0.0
        status = f"generating… ({dropped_note(fitted.dropped_turns)})" if fitted.dropped_turns else "generating…"
        # closing() ends generation at once if the page goes away mid-reply (Gradio closes this generator)
        try:
            with contextlib.closing(model.stream_chat(fitted.messages, params, event, tools=tools)) as stream:
                for chunk in stream:
                    text += chunk.text
                    stats = chunk.stats or stats
                    if time.monotonic() - last > STREAM_INTERVAL_S:
                        last = time.monotonic()
                        partial = conv.messages + [{"role": "assistant", "content": text}]
                        yield display(partial), conv, gr.skip(), status, gr.skip()
        finally:
            cancels.finish(key, event)
        assert isinstance(stats, ReplyStats), "stream_chat ends with a chunk carrying stats"
        reply, extra = shape.finish(text)
        conv.add_reply(text, stats, params, fitted.dropped_turns, message=reply, **extra)
        used = stats.prompt_tokens + stats.completion_tokens
        line = f"{format_stats(conv.stats[len(conv.messages) - 1])} · context {used:,}/{model.info.context_length:,}"
        yield display(conv.messages), conv, gr.skip(), line, stats_rows(conv)

    def run(conv: Conversation, system_prompt: str, values, key: str, restore_on_error: int | None = None):
        """Stream a reply; on a user error, restore the conversation to `restore_on_error` messages.

        `values`: the six sampling settings, then JSON mode, the schema and the tools (as the form has them)."""
        try:
            params = sampling_from_ui(*values[:6])
            shape = ReplyShape.from_ui(*values[6:9])  # a bad schema or tool list ends here, before decoding
            params.response_format = shape.response_format
            yield from stream_reply(conv, system_prompt, params, shape, key)
        except LabError as e:
            if restore_on_error is not None:
                text = conv.messages[restore_on_error]["content"] if restore_on_error < len(conv.messages) else ""
                conv.truncate(restore_on_error)
                yield display(conv.messages), conv, text, "", stats_rows(conv)
            raise gr.Error(str(e)) from None

    # ZeroGPU runs the @gpu functions in a GPU worker process (arguments and results pickled); elsewhere
    # they are unchanged. edit() itself stays here, as its EditData does not pickle: only its reply goes.
    run_on_gpu = gpu(duration=GPU_SECONDS)(run)

    @gpu(duration=GPU_SECONDS)
    def send(text: str, conv: Conversation, system_prompt: str, temperature: float, top_p: float, top_k: int,
             repetition_penalty: float, max_new_tokens: int, seed: int, json_mode: bool, json_schema: str,
             tools: str, request: gr.Request):
        values = (temperature, top_p, top_k, repetition_penalty, max_new_tokens, seed, json_mode, json_schema, tools)
        if not text.strip():
            gr.Warning("Type a message first.")
            yield gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip()
            return
        n = len(conv.messages)
        conv.messages.append({"role": "user", "content": text})
        yield display(conv.messages), conv, "", "generating…", gr.skip()
        yield from run(conv, system_prompt, values, request.session_hash, restore_on_error=n)

    @gpu(duration=GPU_SECONDS)
    def regenerate(conv: Conversation, system_prompt: str, temperature: float, top_p: float, top_k: int,
                   repetition_penalty: float, max_new_tokens: int, seed: int, json_mode: bool, json_schema: str,
                   tools: str, request: gr.Request):
        values = (temperature, top_p, top_k, repetition_penalty, max_new_tokens, seed, json_mode, json_schema, tools)
        i = conv.last_user_index(or_tool=True)
        if i is None:
            gr.Warning("There is no message to answer again yet.")
            yield gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip()
            return
        conv.truncate(i + 1)
        yield display(conv.messages), conv, gr.skip(), "generating…", stats_rows(conv)
        yield from run(conv, system_prompt, values, request.session_hash)

    def edit(conv: Conversation, system_prompt: str, temperature: float, top_p: float, top_k: int,
             repetition_penalty: float, max_new_tokens: int, seed: int, json_mode: bool, json_schema: str,
             tools: str, evt: gr.EditData, request: gr.Request):
        values = (temperature, top_p, top_k, repetition_penalty, max_new_tokens, seed, json_mode, json_schema, tools)
        i = evt.index if isinstance(evt.index, int) else evt.index[0]
        if i >= len(conv.messages) or conv.messages[i]["role"] != "user":
            gr.Warning("Only your own messages can be edited.")
            yield display(conv.messages), gr.skip(), gr.skip(), gr.skip(), gr.skip()
            return
        conv.messages[i] = {"role": "user", "content": edited_text(evt.value)}
        conv.truncate(i + 1)  # the replies after an edited message no longer answer it
        yield display(conv.messages), conv, gr.skip(), "generating…", stats_rows(conv)
        yield from run_on_gpu(conv, system_prompt, values, request.session_hash)

    @gpu(duration=GPU_SECONDS)
    def send_tool_result(text: str, conv: Conversation, system_prompt: str, temperature: float, top_p: float,
                         top_k: int, repetition_penalty: float, max_new_tokens: int, seed: int, json_mode: bool,
                         json_schema: str, tools: str, request: gr.Request):
        """Give the oldest unanswered tool call its result; once every call has one, the model continues."""
        values = (temperature, top_p, top_k, repetition_penalty, max_new_tokens, seed, json_mode, json_schema, tools)
        pending = conv.pending_calls()
        if not pending:
            gr.Warning("No tool call is waiting for a result.")
            yield gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip()
            return
        call = pending[0]
        n = len(conv.messages)
        conv.messages.append(tool_message(text, call["function"]["name"], tool_call_id=call.get("id")))
        if len(pending) > 1:
            note = f"result added; {len(pending) - 1} more call{'s' if len(pending) > 2 else ''} to answer"
            yield display(conv.messages), conv, gr.skip(), note, gr.skip(), ""
            return
        yield display(conv.messages), conv, gr.skip(), "generating…", gr.skip(), ""
        for out in run(conv, system_prompt, values, request.session_hash, restore_on_error=n):
            yield (*out[:2], gr.skip(), *out[3:], out[2] if len(conv.messages) == n else gr.skip())

    def undo(conv: Conversation):
        i = conv.last_user_index()
        if i is None:
            return gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip()
        text = conv.messages[i]["content"]
        conv.truncate(i)
        return display(conv.messages), conv, text, "", stats_rows(conv)

    def clear():
        return [], Conversation(), "", "", []

    def stop(request: gr.Request) -> None:
        cancels.stop(request.session_hash)

    def export(conv: Conversation, system_prompt: str, temperature: float, top_p: float, top_k: int,
               repetition_penalty: float, max_new_tokens: int, seed: int, *_structured):
        try:
            params = sampling_from_ui(temperature, top_p, top_k, repetition_penalty, max_new_tokens, seed)
        except LabError as e:
            raise gr.Error(str(e)) from None
        record = export_conversation(conv, system_prompt, params, manager.model.info if manager.loaded else None)
        stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        path = Path(tempfile.mkdtemp(prefix="qwen-lab-")) / f"qwen-lab-chat-{stamp}.json"
        path.write_text(export_json(record), encoding="utf-8")
        return str(path)

    def load(name: str, quant_choice: str, context_tokens: float | None):
        """Load another model; a failure is an error (a program calling /load_model gets it too), and the model
        that was loaded keeps serving."""
        base = manager.request or LoadRequest()
        try:
            context = form_number("context", context_tokens, "Context tokens") if context_tokens else None
            manager.load(LoadRequest(name or None, quant_choice, base.device, base.double_quant, context))
        except LabError as e:
            raise gr.Error(str(e)) from None
        return model_markdown()

    # ---- events -------------------------------------------------------------------------
    # Every event that changes the conversation then refreshes the JSON and tool-call panels.
    replies = [
        message.submit(send, [message, conv_state, system, *settings], outputs, api_name="send"),
        send_btn.click(send, [message, conv_state, system, *settings], outputs, api_visibility="private"),
        regen_btn.click(regenerate, [conv_state, system, *settings], outputs, api_name="regenerate"),
        chatbot.retry(regenerate, [conv_state, system, *settings], outputs, api_visibility="private"),
        chatbot.edit(edit, [conv_state, system, *settings], outputs, api_visibility="private"),
        tool_send.click(send_tool_result, [tool_result, conv_state, system, *settings], [*outputs, tool_result],
                        api_name="tool_result"),
        tool_result.submit(send_tool_result, [tool_result, conv_state, system, *settings], [*outputs, tool_result],
                           api_visibility="private"),
        undo_btn.click(undo, [conv_state], outputs, api_name="undo"),
        chatbot.undo(undo, [conv_state], outputs, api_visibility="private"),
        clear_btn.click(clear, None, outputs, api_name="clear"),
        chatbot.clear(clear, None, outputs, api_visibility="private"),
    ]
    for event in replies:
        event.then(panels, conv_state, panel_outputs, api_visibility="private")
    stop_btn.click(stop, None, None, queue=False, api_name="stop")
    export_btn.click(export, [conv_state, system, *settings], export_file, api_name="export").then(
        lambda: gr.File(visible=True), None, export_file, api_visibility="private")
    preset.input(lambda name: presets.get(name, gr.skip()), preset, system, api_visibility="private")
    system.input(lambda: CUSTOM, None, preset, api_visibility="private")
    load_btn.click(load, [model_name, quant, context], model_info, api_name="load_model", concurrency_id="model")

    def api_reply(message: str, history, system_prompt: str, values: tuple, request: gr.Request | None):
        """Stream a reply for a program: yields the text so far, then the conversation it ended."""
        if not message or not message.strip():
            raise gr.Error("The message is empty.")
        try:
            system_in_history, messages = parse_history(history)
        except LabError as e:
            raise gr.Error(str(e)) from None
        conv = Conversation(messages + [{"role": "user", "content": message}])
        system_prompt = system_in_history if system_in_history is not None else system_prompt
        key = request.session_hash if request else f"api-{id(conv)}"
        text = ""
        for out in run(conv, system_prompt, values, key):
            if out[0] and out[0][-1]["role"] == "assistant" and len(conv.messages) == len(messages) + 1:
                text = out[0][-1]["content"]["text"]  # still streaming: the reply as it grows
                yield text, None
        yield conv.stats[len(conv.messages) - 1].get("raw", conv.messages[-1]["content"]), conv

    @gpu(duration=GPU_SECONDS)
    def chat(message: str, history: list[dict] | None = None, system_prompt: str = presets[DEFAULT_PRESET],
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

    gr.api(chat, api_name="chat")

    @gpu(duration=GPU_SECONDS)
    def chat_structured(message: str, history: list[dict] | None = None, system_prompt: str = presets[DEFAULT_PRESET],
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

    gr.api(chat_structured, api_name="chat_structured")

    def model_info_api() -> dict:
        """The loaded model: name, source, quantization, device, context length and weight memory."""
        return manager.model.info.to_dict() if manager.loaded else {}

    gr.api(model_info_api, api_name="model_info")
