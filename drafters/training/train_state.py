"""A training run's resumable state (drafters/training/train.py): accelerate's full state swapped
in as a unit, and the metrics log cut back to the checkpoint a resumed run starts from."""
from __future__ import annotations

import json
from pathlib import Path

from runtime.atomic import commit_folder, staging_folder, staging_path, write_json, write_text


def save_train_state(acc, state_dir: Path, step: int) -> None:
    """Accelerate's full state (model, optimiser, scheduler, RNG) staged beside state_dir and
    swapped in as a unit: a crash at any moment leaves the previous or the new state."""
    acc.wait_for_everyone()
    staged = staging_folder(state_dir) if acc.is_main_process else None
    acc.wait_for_everyone()
    staged = staged or staging_path(state_dir)
    acc.save_state(str(staged))
    acc.wait_for_everyone()
    if acc.is_main_process:
        write_json(staged / "progress.json", {"global_step": step})
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
