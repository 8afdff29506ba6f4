"""The evidence behind a verdict: items that flipped, with the prompt and both models' answers (torch-free).

For every category that failed, up to `per_category` items the base model got right and the
fine-tuned model got wrong (for the format category: unrelated prompts now answered like a task
answer); for the task, items the fine-tuned model now gets right that the base model did not (or,
when there are none, items it still gets wrong, with the expected answer). Items come in suite order,
so the same run shows the same items. Multiple-choice items show the chosen choice as the answer.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

from forgetless.lifecycle import TASK_CATEGORY

PER_CATEGORY = 3


def _prompts(suite: Any) -> dict[tuple[str, str], Mapping[str, Any]]:
    if suite is None:
        return {}
    return {(task.name, item["id"]): item for task in suite.tasks for item in task.items}


def flipped_items(baseline_items: Iterable[Any], final_items: Iterable[Any], suite: Any, failed: Iterable[str],
                  per_category: int = PER_CATEGORY) -> list[dict[str, Any]]:
    """[{category, task, id, prompt, baseline, final, expected?, change}] — see the module doc."""
    before = {(i.task, i.id): i for i in baseline_items}
    items = _prompts(suite)
    wanted = list(dict.fromkeys(list(failed) + [TASK_CATEGORY]))
    out: list[dict[str, Any]] = []
    for category in wanted:
        pairs = [(before[(f.task, f.id)], f) for f in final_items
                 if f.category == category and (f.task, f.id) in before]
        if category == TASK_CATEGORY:
            chosen = [(b, f, "learned") for b, f in pairs if b.score < 0.5 <= f.score]
            if not chosen:
                chosen = [(b, f, "still wrong") for b, f in pairs if f.score < 0.5]
        else:
            chosen = [(b, f, "lost") for b, f in pairs if b.score >= 0.5 > f.score]
        for b, f, change in _round_robin(chosen)[:per_category]:
            item = items.get((f.task, f.id), {})
            entry = {"category": category, "task": f.task, "id": f.id, "prompt": item.get("prompt", ""),
                     "baseline": b.answer, "final": f.answer, "change": change}
            if category == TASK_CATEGORY and change == "still wrong" and "target" in item:
                entry["expected"] = item["target"]
            out.append(entry)
    return out


def _round_robin(chosen: list[tuple[Any, Any, str]]) -> list[tuple[Any, Any, str]]:
    """The items of a category's tasks taken in turn (first item of each task, then the second, ...), so a
    category with several tasks shows each of them (format: the leak task beside the list task)."""
    by_task: dict[str, list[tuple[Any, Any, str]]] = {}
    for entry in chosen:
        by_task.setdefault(entry[1].task, []).append(entry)
    out: list[tuple[Any, Any, str]] = []
    for rank in range(max((len(v) for v in by_task.values()), default=0)):
        out += [entries[rank] for entries in by_task.values() if rank < len(entries)]
    return out


def _cut(text: str, width: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[: width - 1] + "…"


def evidence_markdown(evidence: list[dict[str, Any]]) -> str:
    if not evidence:
        return ""
    lines = ["## What changed, item by item", "",
             "Items that flipped: for a failed category, what the base model got right and the fine-tuned model "
             "got wrong; for the task, what it learned.", ""]
    for category in dict.fromkeys(entry["category"] for entry in evidence):
        lines += [f"### {category}", "", "| prompt | base model | fine-tuned model |", "|---|---|---|"]
        for entry in (e for e in evidence if e["category"] == category):
            final = entry["final"] + (f" (expected: {entry['expected']})" if entry.get("expected") else "")
            cells = [_cut(entry["prompt"], 160), _cut(entry["baseline"], 160), _cut(final, 200)]
            lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
        lines.append("")
    return "\n".join(lines)


def evidence_lines(evidence: list[dict[str, Any]], per_category: int = 2, width: int = 90) -> list[str]:
    """A few short lines for `forgetless run`'s output."""
    lines: list[str] = []
    shown: dict[str, int] = {}
    for entry in evidence:
        if shown.get(entry["category"], 0) >= per_category:
            continue
        shown[entry["category"]] = shown.get(entry["category"], 0) + 1
        lines.append(f"  {entry['category']} ({entry['change']}): {_cut(entry['prompt'], width)}")
        lines.append(f"      base:       {_cut(entry['baseline'], width)}")
        lines.append(f"      fine-tuned: {_cut(entry['final'], width)}")
    return lines
