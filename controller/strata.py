"""The difference sequences' inputs from sample windows: both arms' counts per time slot (labels, requests) and the
shadow pairs' agreement per slot of their requests. Pure functions over windows in time order.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import numpy as np

from controller import window_data
from controller.observations import Agreement, Blocks
from controller.window_data import WindowData


def _slots(windows: Sequence[WindowData]) -> tuple[list[datetime], dict[datetime, int]]:
    starts = sorted({w.window_start for w in windows})
    return starts, {start: i for i, start in enumerate(starts)}


def blocks(windows: Sequence[WindowData], baseline: str, candidate: str) -> tuple[Blocks, Blocks]:
    """(labels, requests): per window slot, each arm's labelled predictions and correct ones, and its requests and
    errors (all steps of a slot together). Slots where one arm has nothing count for nothing in a difference."""
    starts, index = _slots(windows)
    counts = np.zeros((8, len(starts)), dtype=np.int64)  # b labelled, b correct, c labelled, c correct, then requests
    for w in windows:
        if w.variant not in (baseline, candidate):
            continue
        arm = 0 if w.variant == baseline else 2
        i = index[w.window_start]
        counts[arm, i] += w.labelled
        counts[arm + 1, i] += w.correct
        counts[4 + arm, i] += w.requests
        counts[5 + arm, i] += w.errors
    return Blocks(*counts[:4]), Blocks(*counts[4:])


def agreement(windows: Sequence[WindowData], baseline: str, candidate: str,
              labels: tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]) -> Agreement:
    """Shadow pairs: the requests both arms answered (a prediction of each under one request id), per slot of the
    candidate's answer, with how many differ and, for the differing ones labelled on both arms, who was right.
    `labels` are each arm's (ids, correct) as `window_data.merged_labels` gives them."""
    starts, index = _slots(windows)

    def answers(variant: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        mine = [w for w in windows if w.variant == variant and w.prediction_ids.size]
        if not mine:
            return window_data.concat([], window_data.encode_ids([])), np.empty(0, np.bytes_), np.empty(0, np.int64)
        ids = window_data.concat([w.prediction_ids for w in mine])
        values = window_data.concat([w.predictions for w in mine])
        slot = np.concatenate([np.full(w.prediction_ids.size, index[w.window_start]) for w in mine])
        ids, last = np.unique(ids[::-1], return_index=True)  # a later answer to one id replaces an earlier one
        return ids, values[::-1][last], slot[::-1][last]

    b_ids, b_values, _ = answers(baseline)
    c_ids, c_values, c_slot = answers(candidate)
    if b_ids.size == 0 or c_ids.size == 0:
        return Agreement()
    both, b_at, c_at = np.intersect1d(b_ids, c_ids, assume_unique=True, return_indices=True)
    slot = c_slot[c_at]
    differ = b_values[b_at] != c_values[c_at]
    size = len(starts)
    result = {"baseline_only": np.zeros(size, np.int64), "candidate_only": np.zeros(size, np.int64),
              "neither": np.zeros(size, np.int64)}
    (lb_ids, lb_correct), (lc_ids, lc_correct) = labels
    differing = both[differ]
    if differing.size and lb_ids.size and lc_ids.size:
        _, d_at, b_lab = np.intersect1d(differing, lb_ids, assume_unique=True, return_indices=True)
        labelled_b = np.full(differing.size, -1, np.int8)
        labelled_b[d_at] = lb_correct[b_lab]
        _, d_at, c_lab = np.intersect1d(differing, lc_ids, assume_unique=True, return_indices=True)
        labelled_c = np.full(differing.size, -1, np.int8)
        labelled_c[d_at] = lc_correct[c_lab]
        known = (labelled_b >= 0) & (labelled_c >= 0)
        differ_slot = slot[differ]
        for name, mask in (("baseline_only", known & (labelled_b == 1) & (labelled_c == 0)),
                           ("candidate_only", known & (labelled_b == 0) & (labelled_c == 1)),
                           ("neither", known & (labelled_b == 0) & (labelled_c == 0))):
            result[name] = np.bincount(differ_slot[mask], minlength=size).astype(np.int64)
    return Agreement(pairs=np.bincount(slot, minlength=size).astype(np.int64),
                     disagree=np.bincount(slot[differ], minlength=size).astype(np.int64), **result)
