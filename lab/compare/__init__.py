"""Compare prompts: two to four *variants* (system prompt, a template with an `{input}` slot, sampling
settings) answer one input together, side by side; no Gradio here.

    variants    a variant and its checks
    run         every variant in one batched generation; a Comparison and its exports
    diff        the word diff of two outputs
    sets        variant sets as YAML (prompts/compare/)
    votes       blind votes in the run history, tallied per pair
    bench       the variants over a benchmark slice, one evaluation run each
"""

from lab.compare.run import Comparison, Pane, check_fits, run_variants
from lab.compare.variants import MAX_PANES, MIN_PANES, SLOT, Variant, check_input, parse_variants

__all__ = ["Comparison", "MAX_PANES", "MIN_PANES", "Pane", "SLOT", "Variant", "check_fits", "check_input",
           "parse_variants", "run_variants"]
