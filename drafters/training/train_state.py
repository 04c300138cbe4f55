"""A training run's resumable state (drafters/training/train.py): accelerate's full state swapped
in as a unit, and the metrics log cut back to the checkpoint a resumed run starts from."""
from __future__ import annotations

import json
from pathlib import Path

from runtime.atomic import commit_folder, staging_folder, staging_path, write_json, write_text


# the TrainConfig fields that decide what a saved state holds (model shape, loss, data): a run
# resumed with other values would load another drafter's weights or train it on other data
RECIPE_FIELDS = ("target", "domain", "drafter", "target_layers", "head", "draft_vocab_size", "head_rank", "loss",
                 "repspec", "repspec_branches", "unroll_steps", "init_from")


def recipe_of(cfg) -> dict:
    return {k: getattr(cfg, k) for k in RECIPE_FIELDS}


def check_resumable(state_dir: Path, cfg) -> int:
    """The step a run resumes from (0: nothing saved); refuses a state saved by another recipe."""
    progress = state_dir / "progress.json"
    if not progress.exists():
        return 0
    saved = json.loads(progress.read_text())
    recipe = saved.get("recipe")
    if recipe is not None:
        differ = {k: (recipe.get(k), v) for k, v in recipe_of(cfg).items() if recipe.get(k) != v}
        if differ:
            raise ValueError(f"{state_dir} holds a training state of another recipe (saved vs now: {differ}); "
                             f"use another work_dir or remove it to start afresh")
    return int(saved["global_step"])


def save_train_state(acc, state_dir: Path, step: int, cfg=None) -> None:
    """Accelerate's full state (model, optimiser, scheduler, RNG) staged beside state_dir and
    swapped in as a unit: a crash at any moment leaves the previous or the new state."""
    acc.wait_for_everyone()
    staged = staging_folder(state_dir) if acc.is_main_process else None
    acc.wait_for_everyone()
    staged = staged or staging_path(state_dir)
    acc.save_state(str(staged))
    acc.wait_for_everyone()
    if acc.is_main_process:
        write_json(staged / "progress.json", {"global_step": step, **({"recipe": recipe_of(cfg)} if cfg else {})})
        commit_folder(state_dir, keep_others=False)
    acc.wait_for_everyone()


def keep_logged_steps(log_path: Path, done: int) -> None:
    """Drop log lines of steps after `done` (logged before a crash, about to be redone), so a
    resumed run logs every step once; a torn last line goes too."""
    if not log_path.exists():
        return
    kept = []
    for line in log_path.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= done:
                kept.append(line + "\n")
        except (json.JSONDecodeError, KeyError, TypeError):
            continue
    write_text(log_path, "".join(kept))
