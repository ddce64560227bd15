"""What the whole page shares beyond its tabs: the title, the theme, the CSS (the phone layout, tables that scroll
sideways, Gradio's error overlay kept from locking a component) and the script in the page's head (Esc stops a
reply, the keyboard shortcuts, the phone drawers, sliders that say when they clamp a typed number).

`LAUNCH` holds the arguments app.py gives `launch()` (and lab.serve's mount) so both serve the same page.
"""

from __future__ import annotations

import gradio as gr

THEME = gr.themes.Soft(primary_hue="violet")
PHONE = "768px"  # at or below this width the Chat tab's side columns become drawers


def title(device: str) -> str:
    """The heading, saying where this page's model runs."""
    where = {"cuda": "on your own GPU", "cpu": "on this machine's CPU", "remote": "through a model server"}
    return f"## Qwen Lab — chat with, compare and measure open models {where.get(device.split(':')[0], '')}".rstrip()


CSS = f"""
#model-info {{ font-size: 0.9rem; }}
#reply-stats, #reply-stats * {{ font-size: 0.85rem !important; opacity: 0.9; min-height: 1.5em; }}
.lab-notice p {{ color: var(--error-text-color, #b91c1c); opacity: 1; }}
.reply-stat {{ display: block; font-size: 0.75rem; opacity: 0.7; margin-top: 0.3em; }}
.dropped-mark {{ display: block; font-size: 0.75rem; color: var(--body-text-color-subdued); font-style: italic; }}
#chatbot .message-content:has(.dropped-mark) {{ opacity: 0.55; }}
/* The copy-all and clear icons get their own strip above the scrolling messages (Gradio floats them over the
   top of the scroll area, where a scrolled conversation slides under them). */
#chatbot .wrapper > .icon-button-wrapper.top-panel {{ position: static; align-self: flex-end; flex: none; }}
#chatbot .wrapper > .bubble-wrap {{ height: auto; flex: 1 1 0; min-height: 0; }}
#context-meter, #context-meter * {{ font-size: 0.78rem !important; opacity: 0.75; min-height: 1.2em; }}
#reply-actions {{ flex-wrap: wrap; gap: 0.4rem; }}
#reply-actions > button, #reply-actions > div {{ min-width: 0 !important; flex: 1 1 auto; }}
#chat-dock .prose {{ padding: 0 0.5rem; }}
.clamp-note {{ font-size: 0.8rem; color: var(--error-text-color, #b91c1c); margin-top: 0.25rem; }}
#version-row {{ align-items: center; gap: 0.25rem; max-width: 14rem; }}
#version-row button {{ min-width: 2.2rem; }}
#chat-drawer-buttons {{ display: none; }}
/* An error never locks a component: Gradio's red "Error" overlay is hidden (its reason is in the toast). */
[data-testid="status-tracker"]:has(> .error) {{ display: none !important; }}
/* Tables scroll sideways rather than being cut off. */
.prose table, .md table {{ display: block; overflow-x: auto; max-width: 100%; }}
.table-wrap, .virtual-table-viewport {{ overflow-x: auto !important; max-width: 100%; }}
@media (max-width: {PHONE}) {{
  .gradio-container {{ padding-left: 4px !important; padding-right: 4px !important; }}
  #chat-drawer-buttons {{ display: flex; flex-wrap: nowrap; gap: 0.5rem; }}
  #chat-drawer-buttons > button {{ min-width: 0 !important; }}
  #reply-actions {{ flex-direction: row !important; }}
  #reply-actions > button {{ flex: 1 1 22%; }}
  #model-info, #model-info * {{ font-size: 0.75rem !important; }}
  #page-title h2 {{ font-size: 1rem !important; margin: 0; }}
  #chat-dock > .row, #chat-dock .row {{ flex-wrap: nowrap !important; flex-direction: row !important; }}
  #chatbot {{ height: calc(100dvh - 440px) !important; min-height: 220px; }}
  /* fixed, not sticky: the page's container clips overflow, which sticky positioning cannot pass */
  #chat-dock {{ position: fixed !important; left: 0; right: 0; bottom: 0; z-index: 20; margin: 0 !important;
               background: var(--background-fill-primary); padding: 4px 6px calc(4px + env(safe-area-inset-bottom));
               border-top: 1px solid var(--border-color-primary); box-shadow: 0 -4px 12px rgba(0,0,0,.08); }}
  #chat-main {{ padding-bottom: 150px; }}
  #chat-dock #send-btn, #chat-dock #stop-btn {{ min-width: 4.5rem; }}
  #chat-list-col, #chat-settings-col {{ position: fixed !important; top: 0; bottom: 0; z-index: 1000;
      width: min(88vw, 380px) !important; max-width: none !important; overflow-y: auto; padding: 12px;
      background: var(--background-fill-primary); box-shadow: 0 0 24px rgba(0,0,0,.3); transition: transform .2s; }}
  #chat-list-col {{ left: 0; transform: translateX(-105%); }}
  #chat-settings-col {{ right: 0; transform: translateX(105%); }}
  #chat-list-col.drawer-open, #chat-settings-col.drawer-open {{ transform: none; }}
  .drawer-close {{ display: inline-flex !important; }}
}}
.drawer-close {{ display: none !important; }}
"""

# Esc stops; Alt+N new chat, Alt+R regenerate, Alt+C continue, Alt+U undo, Alt+[ / Alt+] reply versions,
# "/" to the message box. A number typed into a slider's box outside its range gets a note saying what it became.
HEAD = """
<script>
(() => {
  const click = (id) => { const b = document.querySelector('#' + id); if (b && !b.disabled) b.click(); };
  const keys = {n: 'clear-btn', r: 'regen-btn', c: 'continue-btn', u: 'undo-btn', '[': 'version-prev',
                ']': 'version-next'};
  document.addEventListener('keydown', (e) => {  // capture: a text box's own handling comes after
    const send = document.querySelector('#send-btn');
    const inBox = e.target.closest && e.target.closest('#chat-input');
    if (e.key === 'Enter' && !e.shiftKey && inBox && send && send.disabled) {
      e.preventDefault(); e.stopPropagation();  // a reply is streaming: the message waits in the box, visibly
      const dock = document.querySelector('#chat-dock');
      let hint = dock.querySelector('.busy-hint');
      if (!hint) {
        hint = document.createElement('div'); hint.className = 'clamp-note busy-hint'; dock.appendChild(hint);
      }
      hint.innerText = 'A reply is still coming: your message waits here. Press Esc or Stop to end the reply.';
      setTimeout(() => hint.remove(), 6000);
      return;
    }
    if (e.key === 'Escape') {
      const open = document.querySelectorAll('.drawer-open');
      if (open.length) { open.forEach((d) => d.classList.remove('drawer-open')); return; }
      click('stop-btn'); return;
    }
    if (e.altKey && !e.ctrlKey && !e.metaKey && keys[e.key.toLowerCase()]) {
      e.preventDefault(); click(keys[e.key.toLowerCase()]); return;
    }
    const typing = e.target.closest && e.target.closest('input, textarea, [contenteditable]');
    if (e.key === '/' && !typing) {
      const box = document.querySelector('#chat-input textarea');
      if (box) { e.preventDefault(); box.focus(); }
    }
  }, true);
  const clampNote = (e) => {
    const box = e.target;
    if (!(box instanceof HTMLInputElement) || box.dataset.testid !== 'number-input') return;
    const block = box.closest('.block');
    const value = Number(box.value), min = Number(box.min), max = Number(box.max);
    let note = block.querySelector('.clamp-note');
    if (box.value === '' || !Number.isFinite(value) || (value >= min && value <= max)) {
      if (note && e.type === 'input') note.remove();  // a new number typed in range: the note goes
      return;
    }
    if (!note) { note = document.createElement('div'); note.className = 'clamp-note'; block.appendChild(note); }
    const label = (block.querySelector('[data-testid=block-info]') || {}).innerText || 'This setting';
    const to = value > max ? max : min;
    note.innerText = `${label} goes from ${min.toLocaleString()} to ${max.toLocaleString()}: ` +
                     `${value.toLocaleString()} became ${to.toLocaleString()}.`;
  };
  // capture phase, so the number is read as typed, before the slider clamps it
  for (const kind of ['input', 'change', 'focusout']) document.addEventListener(kind, clampNote, true);
})();
</script>
"""

# Which links the footer shows: Gradio's "Runs" (its own record of API calls kept in the browser) is left out,
# as people took it for the run history of the Evaluate tab; that record is off too.
LAUNCH = {"theme": THEME, "css": CSS, "head": HEAD, "footer_links": ["api", "gradio", "settings"],
          "run_history": False}

# The phone drawers open and close in the browser alone (no round trip); Esc closes them too.
# (The class goes on the drawer itself: Gradio scopes the page's CSS, so a selector starting at <body> never matches.)
CLOSE_DRAWERS = "() => { document.querySelectorAll('.drawer-open').forEach((d) => d.classList.remove('drawer-open')); }"
OPEN_CHATS = f"() => {{ ({CLOSE_DRAWERS})(); document.querySelector('#chat-list-col').classList.add('drawer-open'); }}"
OPEN_SETTINGS = (f"() => {{ ({CLOSE_DRAWERS})();"
                 " document.querySelector('#chat-settings-col').classList.add('drawer-open'); }")
