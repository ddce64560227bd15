"""The Compare tab's record of blind votes: leaderboards rated the way Chatbot Arena rates (lab.compare.ratings: a
Bradley–Terry fit over every vote, ties and "both are bad" counted half, bootstrap 95% intervals), one of variants
and one of models (model · quantization, from votes whose panes ran on different models), and the raw tally per
pair of variants under them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import gradio as gr
import pandas as pd

from lab.compare.ratings import BOARD_HEADERS, ROUNDS, leaderboard
from lab.compare.votes import TALLY_HEADERS
from lab.errors import LabError

ABOUT = (f"Ratings as Chatbot Arena computes them: a Bradley–Terry fit over every blind vote (a tie or "
         f"\"both are bad\" counts half a win each way), on Elo's scale (mean 1000; 100 points ahead is a 64% "
         f"chance of being preferred), with 95% intervals from {ROUNDS:,} bootstrap resamples of the votes. "
         "Overlapping intervals: the votes cannot tell the two apart yet.")


@dataclass
class BoardViews:
    note: gr.Markdown
    variants: gr.Dataframe
    models: gr.Dataframe
    tally: gr.Dataframe

    @property
    def outputs(self) -> list:
        return [self.note, self.variants, self.models, self.tally]


def build_board(votes: Callable) -> BoardViews:
    note, by_variant, by_model, tally = frames(votes)
    with gr.Accordion("Leaderboard from blind votes", open=True, elem_id="cmp-board"):
        note_md = gr.Markdown(note, elem_id="cmp-board-note")
        variants_df = gr.Dataframe(by_variant, interactive=False, label="Variants (name #fingerprint)",
                                   elem_id="cmp-board-variants")
        models_df = gr.Dataframe(by_model, interactive=False, label="Models (model · quantization)",
                                 elem_id="cmp-board-models")
        with gr.Accordion("Raw tally, per pair of variants", open=False, elem_id="cmp-tally-box"):
            tally_df = gr.Dataframe(tally, interactive=False, elem_id="cmp-tally")
    return BoardViews(note_md, variants_df, models_df, tally_df)


def frames(votes: Callable) -> tuple[str, pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(note, variant board, model board, tally) from the votes now in the run history."""
    try:
        store = votes()
        records = store.votes()
        tally = [t.row() for t in store.tally()]
    except LabError as e:
        return str(e), _empty(), _empty(), pd.DataFrame([], columns=TALLY_HEADERS)
    by_variant, by_model = leaderboard(records, "variant"), leaderboard(records, "model")
    if not records:
        note = ("No blind votes yet: tick Blind mode, press Run all and vote; the leaderboard starts with the "
                "first vote.")
    else:
        note = (f"{len(records):,} vote{'s' * (len(records) != 1)}; {by_model.votes:,} between different models. "
                + ABOUT)
    return (note, pd.DataFrame(by_variant.frame_rows(), columns=BOARD_HEADERS),
            pd.DataFrame(by_model.frame_rows(), columns=BOARD_HEADERS), pd.DataFrame(tally, columns=TALLY_HEADERS))


def _empty() -> pd.DataFrame:
    return pd.DataFrame([], columns=BOARD_HEADERS)
