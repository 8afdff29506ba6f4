"""Packing (`training.packing`): a micro-batch's short examples laid end to end in rows of
`maxSeqLength` tokens instead of one padded row each.

Rows are filled first-fit in the micro-batch's order; every example keeps its own position ids
(0, 1, 2, … restarting at each example) and the batch carries no attention mask. transformers
reads such position ids as packed sequences ("padding-free" training): with SDPA and eager
attention its mask builder (`masking_utils.find_packed_sequence_indices`) makes the causal mask
block-diagonal, and flash-attention uses variable-length kernels, so no token attends to another
example. The forward must run with `use_cache=False` (the trainer's does): transformers only reads
packed position ids when no KV cache is passed, and builds one by default. A row's tail padding gets its own positions (a separate dummy sequence) and labels -100.

A micro-batch still holds `batchSize` examples, so mixing fractions, replay draws, the data
position in checkpoints and sharding are unchanged; packing only removes the padding (fewer,
fuller rows). The loss is the mean over all labelled tokens of the micro-batch, as unpacked.
"""

from __future__ import annotations

from typing import Sequence

IGNORE_INDEX = -100


def pack_rows(lengths: Sequence[int], max_length: int) -> list[list[int]]:
    """Indices of examples per row, first-fit in order (an example is never split)."""
    rows: list[list[int]] = []
    room: list[int] = []
    for index, length in enumerate(lengths):
        for r, free in enumerate(room):
            if length <= free:
                rows[r].append(index)
                room[r] -= length
                break
        else:
            rows.append([index])
            room.append(max_length - length)
    return rows


def pack(encoded: Sequence[tuple[list[int], list[int]]], max_length: int, pad_id: int):
    """{input_ids, labels, position_ids} LongTensors (no attention_mask: see the module doc)."""
    import torch

    rows = pack_rows([len(ids) for ids, _ in encoded], max_length)
    width = max(sum(len(encoded[i][0]) for i in row) for row in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    positions = torch.zeros((len(rows), width), dtype=torch.long)
    for r, row in enumerate(rows):
        at = 0
        for i in row:
            ids, lab = encoded[i]
            input_ids[r, at : at + len(ids)] = torch.tensor(ids)
            labels[r, at : at + len(lab)] = torch.tensor(lab)
            positions[r, at : at + len(ids)] = torch.arange(len(ids))
            at += len(ids)
        positions[r, at:] = torch.arange(width - at)
        # the label of an example's first token would be predicted from the previous example's last
        # token (the model shifts labels by one): unpacked it is never used, so it is masked here
        at = 0
        for i in row:
            labels[r, at] = IGNORE_INDEX
            at += len(encoded[i][0])
    total = sum(len(ids) for ids, _ in encoded)
    return {"input_ids": input_ids, "labels": labels, "position_ids": positions, "num_tokens": torch.tensor(total)}


def real_tokens(batch) -> int:
    """Tokens of real examples in a (packed or padded) batch."""
    if "attention_mask" in batch:
        return int(batch["attention_mask"].sum())
    return int(batch["num_tokens"])
