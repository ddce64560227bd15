"""The Chat tab: streaming replies, Stop (Esc), regenerate with the replies kept as versions (‹ 2/3 ›), Continue,
undo, edit, thumbs, export, saved chats (chat_saved), system-prompt presets, sampling controls, stats under every
reply, a token meter while typing, and the model panel (chat_model). The reply logic is in chat_reply.

Programs reach every action by a stable api_name (gradio_client): `/chat` is stateless (message, history, system
prompt and parameters in; the reply out, streamed); `/chat_structured` is the same with JSON mode or tools, and
returns the parsed object or the tool calls; `/send`, `/regenerate`, `/continue`, `/undo`, `/stop`, `/clear`,
`/tool_result` and `/export` drive a session like the page does; `/model_info` and `/load_model` concern the model.
A page event never raises: a setting out of range, a bad schema or a failed reply is one sentence on the stats
line, and the conversation stays as it was. /chat, /chat_structured and /load_model raise it for the program.
"""

from __future__ import annotations

import datetime as dt
import tempfile
from pathlib import Path

import gradio as gr

from lab.chat.conversation import Conversation, export_conversation, export_json, with_system
from lab.chat.presets import system_presets
from lab.chat.saved import ChatStore
from lab.chat.tools import tool_message
from lab.errors import LabError
from lab.interface import SamplingParams
from lab.models.manager import ModelManager
from lab.space import gpu
from lab.ui import page
from lab.ui.chat_api import build_api
from lab.ui.chat_model import ModelPanel
from lab.ui.chat_reply import Replies, checked, max_new_limit, show, stats_rows
from lab.ui.chat_saved import SavedChats
from lab.ui.chat_tools import build_panels, build_settings, panels
from lab.ui.common import PAGE_STREAMS, SessionCancels, notice, whole_number

DEFAULT_PRESET = "Qwen default"
CUSTOM = "Custom"
DEFAULTS = SamplingParams()  # Qwen2.5-Instruct's own sampling defaults
GPU_SECONDS = 120  # ZeroGPU: how long one reply may hold the GPU (a Space owner can lower max new tokens)
STATS_HEADERS = ["#", "prompt tok", "completion tok", "first token ms", "tok/s", "GPU peak GiB", "seed",
                 "how it ended"]
SHORTCUTS = ("**Keys:** Enter sends · Shift+Enter new line · Esc stops · Alt+N new chat · Alt+R regenerate · "
             "Alt+C continue · Alt+U undo · Alt+[ / Alt+] reply versions · / to the message box")


def edited_text(value) -> str:
    """The text of an edited message, whatever shape Gradio hands it in."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        return value.get("text") or value.get("content") or ""
    if isinstance(value, list):
        return "".join(edited_text(v) for v in value)
    return str(value)


def build_chat_tab(manager: ModelManager, demo: gr.Blocks | None = None) -> None:
    presets = system_presets()
    replies = Replies(manager, SessionCancels())
    saved = SavedChats(ChatStore.open())
    panel = ModelPanel(manager)
    top = max_new_limit(manager.model.info.context_length) if manager.loaded else 8192

    # ---- layout -------------------------------------------------------------------------
    conv_state = gr.State(Conversation())
    with gr.Row(elem_id="chat-row"):
        with gr.Column(scale=1, min_width=220, elem_id="chat-list-col"):
            saved.build()
        with gr.Column(scale=4, elem_id="chat-main"):
            with gr.Row(elem_id="chat-drawer-buttons"):
                chats_btn = gr.Button("☰ Chats", size="sm", elem_id="chats-toggle")
                settings_btn = gr.Button("⚙ Settings", size="sm", elem_id="settings-toggle")
            model_info = gr.Markdown(panel.markdown(), elem_id="model-info")
            chatbot = gr.Chatbot(
                elem_id="chatbot", label="Conversation", show_label=False, height=540, editable="user",
                buttons=["copy", "copy_all"], feedback_options=("Like", "Dislike"),
                latex_delimiters=[{"left": "$$", "right": "$$", "display": True},
                                  {"left": "$", "right": "$", "display": False}],
                placeholder="Ask anything, in any language. Markdown, code and math render here.",
            )
            with gr.Row(elem_id="reply-actions"):
                regen_btn = gr.Button("Regenerate", size="sm", elem_id="regen-btn")
                continue_btn = gr.Button("Continue", size="sm", elem_id="continue-btn")
                undo_btn = gr.Button("Undo", size="sm", elem_id="undo-btn")
                export_btn = gr.Button("Export JSON", size="sm", elem_id="export-btn")
                with gr.Row(elem_id="version-row", visible=False) as version_row:
                    prev_btn = gr.Button("‹", size="sm", elem_id="version-prev", min_width=36)
                    version_md = gr.Markdown("", elem_id="version-label")
                    next_btn = gr.Button("›", size="sm", elem_id="version-next", min_width=36)
            with gr.Group(elem_id="chat-dock"):
                with gr.Row():
                    message = gr.Textbox(show_label=False, placeholder="Message (Enter sends, Shift+Enter new line)",
                                         lines=1, max_lines=8, scale=8, elem_id="chat-input", autofocus=True)
                    with gr.Column(scale=1, min_width=90):
                        send_btn = gr.Button("Send", variant="primary", elem_id="send-btn")
                        stop_btn = gr.Button("Stop", variant="stop", elem_id="stop-btn", interactive=False)
                meter = gr.Markdown("", elem_id="context-meter")
                stats_md = gr.Markdown("", elem_id="reply-stats")
            json_panel, json_check, json_view, tool_panel, calls_md, tool_result, tool_send = build_panels()
            export_file = gr.File(label="Conversation export", visible=False, elem_id="export-file")
            with gr.Accordion("Stats of every reply", open=False):
                stats_table = gr.Dataframe(headers=STATS_HEADERS, value=[], interactive=False, elem_id="stats-table")
        with gr.Column(scale=2, min_width=300, elem_id="chat-settings-col"):
            close_btn = gr.Button("✕ Close settings", size="sm", elem_classes="drawer-close")
            with gr.Accordion("System prompt", open=True):
                preset = gr.Dropdown([*presets, CUSTOM], value=DEFAULT_PRESET, label="Preset", elem_id="preset")
                system = gr.Textbox(presets[DEFAULT_PRESET], label="System prompt (editable)", lines=4,
                                    max_lines=16, elem_id="system-prompt")
            with gr.Accordion("Sampling", open=True):
                temperature = gr.Slider(0, 2, value=DEFAULTS.temperature, step=0.05, label="Temperature (0 = greedy)")
                top_p = gr.Slider(0.05, 1, value=DEFAULTS.top_p, step=0.05, label="Top-p")
                top_k = gr.Slider(0, 200, value=DEFAULTS.top_k, step=1, label="Top-k (0 = off)")
                rep = gr.Slider(0.8, 2, value=DEFAULTS.repetition_penalty, step=0.01, label="Repetition penalty")
                max_new = gr.Slider(16, top, value=min(1024, top), step=16, label="Max new tokens",
                                    elem_id="max-new-tokens", info=f"up to {top:,}, the model's context less room "
                                                                   "for the prompt")
                seed = whole_number(-1, precision=0, label="Seed (-1 = new each reply; the one used is shown)",
                                    elem_id="seed")
            json_mode, json_schema, tools_box = build_settings()
            panel.build()
            gr.Markdown(SHORTCUTS, elem_id="shortcuts")
    settings = [temperature, top_p, top_k, rep, max_new, seed, json_mode, json_schema, tools_box]
    outputs = [chatbot, conv_state, message, stats_md, stats_table]
    controls = [send_btn, stop_btn, regen_btn, continue_btn, undo_btn, saved.new_btn, prev_btn, next_btn,
                saved.choices]

    # ---- callbacks ----------------------------------------------------------------------
    def key(request: gr.Request | None) -> str:
        return request.session_hash if request else "api"

    @gpu(duration=GPU_SECONDS)
    def send(text: str, conv: Conversation, system_prompt: str, temperature: float, top_p: float, top_k: int,
             repetition_penalty: float, max_new_tokens: int, seed: int, json_mode: bool, json_schema: str,
             tools: str, request: gr.Request):
        values = (temperature, top_p, top_k, repetition_penalty, max_new_tokens, seed, json_mode, json_schema, tools)
        if not text.strip():
            yield gr.skip(), gr.skip(), gr.skip(), notice("Type a message first."), gr.skip()
            return
        checks: dict = {}

        def change(c: Conversation):
            checks["shape"] = replies.check(values)  # before the message joins the conversation
            c.messages.append({"role": "user", "content": text})
            return show(c), c, "", "generating… · Esc stops", gr.skip()

        yield from replies.guarded(conv, change, lambda c: replies.stream(c, system_prompt, *checks["shape"],
                                                                          key(request)), box_after_failure=text)

    @gpu(duration=GPU_SECONDS)
    def regenerate(conv: Conversation, system_prompt: str, temperature: float, top_p: float, top_k: int,
                   repetition_penalty: float, max_new_tokens: int, seed: int, json_mode: bool, json_schema: str,
                   tools: str, request: gr.Request):
        values = (temperature, top_p, top_k, repetition_penalty, max_new_tokens, seed, json_mode, json_schema, tools)
        i = conv.last_user_index(or_tool=True)
        if i is None:
            yield gr.skip(), gr.skip(), gr.skip(), notice("There is no message to answer again yet."), gr.skip()
            return
        checks: dict = {}

        def change(c: Conversation):
            checks["shape"] = replies.check(values)
            c.truncate(i + 1, keep_versions=True)  # the reply replaced stays a version of it
            return show(c), c, gr.skip(), "generating… · Esc stops", stats_rows(c)

        yield from replies.guarded(conv, change, lambda c: replies.stream(c, system_prompt, *checks["shape"],
                                                                          key(request)))

    @gpu(duration=GPU_SECONDS)
    def continue_reply(conv: Conversation, system_prompt: str, temperature: float, top_p: float, top_k: int,
                       repetition_penalty: float, max_new_tokens: int, seed: int, json_mode: bool, json_schema: str,
                       tools: str, request: gr.Request):
        values = (temperature, top_p, top_k, repetition_penalty, max_new_tokens, seed, json_mode, json_schema, tools)
        yield from replies.guarded(conv, lambda c: None, lambda c: replies.continue_text(
            c, system_prompt, replies.check(values)[0], key(request)))

    def edit(conv: Conversation, system_prompt: str, temperature: float, top_p: float, top_k: int,
             repetition_penalty: float, max_new_tokens: int, seed: int, json_mode: bool, json_schema: str,
             tools: str, evt: gr.EditData, request: gr.Request):
        values = (temperature, top_p, top_k, repetition_penalty, max_new_tokens, seed, json_mode, json_schema, tools)
        i = evt.index if isinstance(evt.index, int) else evt.index[0]
        if i >= len(conv.messages) or conv.messages[i]["role"] != "user":
            yield show(conv), gr.skip(), gr.skip(), notice("Only your own messages can be edited."), gr.skip()
            return
        checks: dict = {}

        def change(c: Conversation):
            checks["shape"] = replies.check(values)
            c.messages[i] = {"role": "user", "content": edited_text(evt.value)}
            c.truncate(i + 1)  # the replies after an edited message no longer answer it
            return show(c), c, gr.skip(), "generating… · Esc stops", stats_rows(c)

        # ZeroGPU pickles a @gpu function's arguments and EditData does not pickle: only the reply goes there
        yield from replies.guarded(conv, change, lambda c: stream_on_gpu(c, system_prompt, *checks["shape"],
                                                                         key(request)))

    @gpu(duration=GPU_SECONDS)
    def stream_on_gpu(conv, system_prompt, params, shape, session):
        yield from replies.stream(conv, system_prompt, params, shape, session)

    @gpu(duration=GPU_SECONDS)
    def send_tool_result(text: str, conv: Conversation, system_prompt: str, temperature: float, top_p: float,
                         top_k: int, repetition_penalty: float, max_new_tokens: int, seed: int, json_mode: bool,
                         json_schema: str, tools: str, request: gr.Request):
        """Give the oldest unanswered tool call its result; once every call has one, the model continues."""
        values = (temperature, top_p, top_k, repetition_penalty, max_new_tokens, seed, json_mode, json_schema, tools)
        pending = conv.pending_calls()
        if not pending:
            yield gr.skip(), gr.skip(), gr.skip(), notice("No tool call is waiting for a result."), gr.skip(), gr.skip()
            return
        call, checks = pending[0], {}

        def change(c: Conversation):
            checks["shape"] = replies.check(values)
            c.messages.append(tool_message(text, call["function"]["name"], tool_call_id=call.get("id")))
            return show(c), c, gr.skip(), "generating… · Esc stops", gr.skip()

        if len(pending) > 1:
            conv.messages.append(tool_message(text, call["function"]["name"], tool_call_id=call.get("id")))
            note = f"result added; {len(pending) - 1} more call{'s' if len(pending) > 2 else ''} to answer"
            yield show(conv), conv, gr.skip(), note, gr.skip(), ""
            return
        for out in replies.guarded(conv, change, lambda c: replies.stream(c, system_prompt, *checks["shape"],
                                                                          key(request))):
            failed = isinstance(out[3], str) and out[3].startswith("⚠️")
            yield (*out, text if failed else "")

    def undo(conv: Conversation):
        i = conv.last_user_index()
        if i is None:
            return gr.skip(), gr.skip(), gr.skip(), notice("There is nothing to undo."), gr.skip()
        text = conv.messages[i]["content"]
        conv.truncate(i)
        return show(conv), conv, text, replies.line(conv), stats_rows(conv)

    def clear():
        return [], Conversation(), "", "", []

    def stop(request: gr.Request) -> None:
        replies.cancels.stop(request.session_hash)

    def export(conv: Conversation, system_prompt: str, *values):
        record = export_conversation(conv, system_prompt, SamplingParams(),
                                     manager.model.info if manager.loaded else None)
        try:
            info = manager.model.info
            record["parameters"] = checked(values, info.context_length, info.name)[0].to_dict()
        except LabError:
            record["parameters"] = None  # the form holds a setting out of range: the export says none
        stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        path = Path(tempfile.mkdtemp(prefix="qwen-lab-")) / f"qwen-lab-chat-{stamp}.json"
        path.write_text(export_json(record), encoding="utf-8")
        return str(path)

    def version(conv: Conversation, step: int):
        if not conv.show_version(step):
            return gr.skip(), gr.skip(), gr.skip(), notice("There is no other version that way."), gr.skip()
        return show(conv), conv, gr.skip(), replies.line(conv), stats_rows(conv)

    def rate(conv: Conversation, evt: gr.LikeData):
        i = evt.index if isinstance(evt.index, int) else evt.index[0]
        rating = {True: "up", False: "down"}.get(evt.liked) if isinstance(evt.liked, bool) else None
        try:
            conv.rate(i, rating)
        except LabError as e:
            return gr.skip(), notice(str(e))
        return conv, gr.skip()

    def refreshed(conv: Conversation):
        """Everything drawn from the conversation: after a chat opens, and after each change."""
        last = len(conv.messages) - 1
        label = conv.version_label(last) if last >= 0 else ""
        return show(conv), replies.line(conv), stats_rows(conv), *panels(conv), gr.Row(visible=bool(label)), label

    refresh_outputs = [chatbot, stats_md, stats_table, json_panel, json_check, json_view, tool_panel, calls_md,
                       version_row, version_md]

    def redrawn(conv: Conversation):
        """After a reply event (which drew the conversation and the stats line): the panels and the versions."""
        return refreshed(conv)[3:]

    def busy():
        return (gr.Button("Replying…", interactive=False), gr.Button(interactive=True),
                *[gr.Button(interactive=False)] * 6, gr.Radio(interactive=False))

    def idle():
        return (gr.Button("Send", interactive=True), gr.Button(interactive=False),
                *[gr.Button(interactive=True)] * 6, gr.Radio(interactive=True))

    def meter_line(text: str, conv: Conversation, system_prompt: str, max_new_tokens: float):
        """While typing: the tokens the conversation with this message would take, against the context."""
        if not manager.loaded:
            return ""
        model = manager.model
        try:
            messages = with_system(system_prompt, [*conv.messages, {"role": "user", "content": text or ""}])
            used, ctx = model.count_chat_tokens(messages), model.info.context_length
            room = int(max_new_tokens or 0)
        except Exception:  # noqa: BLE001 - a meter that cannot count says nothing rather than break typing
            return ""
        line = f"{used:,} + {room:,} max new tokens of {ctx:,} context tokens"
        return line + (" · the oldest turns will be dropped to fit" if used + room > ctx else "")

    # ---- events -------------------------------------------------------------------------
    reply_inputs = [conv_state, system, *settings]
    light = {"concurrency_limit": None, "api_visibility": "private"}  # never waits behind a reply in the queue
    after_saved = [conv_state, saved.browser, saved.choices, saved.title, saved.note]

    def reply_event(trigger, fn, inputs, outs=outputs, **kw):
        trigger(busy, None, controls, queue=False, api_visibility="private")
        event = trigger(fn, inputs, outs, concurrency_id="chat", concurrency_limit=PAGE_STREAMS, **kw)
        (event.then(redrawn, conv_state, refresh_outputs[3:], **light)
         .then(saved.autosave, [conv_state, system, saved.browser, saved.search], after_saved, **light)
         .then(idle, None, controls, **light))

    reply_event(message.submit, send, [message, *reply_inputs], api_name="send")
    reply_event(send_btn.click, send, [message, *reply_inputs], api_visibility="private")
    reply_event(regen_btn.click, regenerate, reply_inputs, api_name="regenerate")
    reply_event(chatbot.retry, regenerate, reply_inputs, api_visibility="private")
    reply_event(continue_btn.click, continue_reply, reply_inputs, api_name="continue")
    reply_event(chatbot.edit, edit, reply_inputs, api_visibility="private")
    reply_event(tool_send.click, send_tool_result, [tool_result, *reply_inputs], [*outputs, tool_result],
                api_name="tool_result")
    reply_event(tool_result.submit, send_tool_result, [tool_result, *reply_inputs], [*outputs, tool_result],
                api_visibility="private")
    for trigger, fn, name in [(undo_btn.click, undo, "undo"), (chatbot.undo, undo, None),
                              (prev_btn.click, lambda c: version(c, -1), None),
                              (next_btn.click, lambda c: version(c, +1), None)]:
        kw = {"api_name": name} if name else {"api_visibility": "private"}
        (trigger(fn, conv_state, outputs, **kw).then(redrawn, conv_state, refresh_outputs[3:], **light)
         .then(saved.autosave, [conv_state, system, saved.browser, saved.search], after_saved, **light))
    for trigger, name in [(saved.new_btn.click, "clear"), (chatbot.clear, None)]:
        kw = {"api_name": name} if name else {"api_visibility": "private"}
        (trigger(clear, None, outputs, **kw)
         .then(saved.new, saved.browser, [conv_state, saved.browser, saved.choices, saved.title, saved.note], **light)
         .then(refreshed, conv_state, refresh_outputs, **light))
    (chatbot.like(rate, conv_state, [conv_state, stats_md], **light)
     .then(saved.autosave, [conv_state, system, saved.browser, saved.search], after_saved, **light))
    stop_btn.click(stop, None, None, queue=False, api_name="stop")
    export_btn.click(export, [conv_state, system, *settings], export_file, api_name="export").then(
        lambda: gr.File(visible=True), None, export_file, api_visibility="private")
    preset.input(lambda name: presets.get(name, gr.skip()), preset, system, api_visibility="private")
    system.input(lambda: CUSTOM, None, preset, api_visibility="private")
    message.change(meter_line, [message, conv_state, system, max_new], meter, trigger_mode="always_last",
                   show_progress="hidden", **light)

    # saved chats
    opened = [conv_state, system, saved.browser, saved.choices, saved.title, saved.note]
    saved.choices.input(saved.open, [saved.choices, saved.browser], opened, **light).then(
        refreshed, conv_state, refresh_outputs, **light)
    saved.search.change(saved.find, [saved.search, conv_state, saved.browser], saved.choices,
                       trigger_mode="always_last", show_progress="hidden", **light)
    saved.rename_btn.click(saved.rename, [conv_state, saved.title, saved.browser, saved.search],
                           [conv_state, saved.choices, saved.note], **light)
    saved.delete_btn.click(saved.delete, [conv_state, saved.browser, saved.search],
                           [conv_state, saved.browser, saved.choices, saved.title, saved.note], **light).then(
        refreshed, conv_state, refresh_outputs, **light)
    saved.upload.upload(saved.import_file, [saved.upload, saved.browser], opened, **light).then(
        refreshed, conv_state, refresh_outputs, **light)

    # the phone's drawers, in the browser alone
    chats_btn.click(None, js=page.OPEN_CHATS)
    settings_btn.click(None, js=page.OPEN_SETTINGS)
    for btn in (close_btn, saved.close_btn):
        btn.click(None, js=page.CLOSE_DRAWERS)
    saved.choices.input(None, js=page.CLOSE_DRAWERS)

    # the model
    load_outputs = [model_info, panel.name, panel.note, panel.load_btn, max_new]
    panel.load_btn.click(panel.page_load, [panel.name, panel.quant, panel.context], load_outputs,
                         concurrency_id="model", api_visibility="private")
    gr.api(panel.api_load, api_name="load_model", concurrency_id="model")
    if demo is not None:  # a reload opens the chat that was open, and shows the model that runs now
        demo.load(saved.start, saved.browser, [conv_state, system, saved.browser, saved.choices, saved.title],
                  **light).then(refreshed, conv_state, refresh_outputs, **light).then(
            lambda: (panel.markdown(), gr.Dropdown(value=panel.running()), panel.slider()), None,
            [model_info, panel.name, max_new], **light)

    build_api(manager, replies, presets[DEFAULT_PRESET])
