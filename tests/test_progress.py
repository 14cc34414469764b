"""Logs a person can read (issue 12): plain lines when stderr is not a terminal, the live bar when it
is, ``run.log`` in the run folder either way, and stage lines that say why a stage did nothing."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time

import optuna
import pytest
from helpers import TINY_IMAGE_BACKBONE, tiny_run_config

from automl import pipeline, trainers
from automl.progress import RUN_LOG
from automl.space import SearchSpace

EPOCH_LINE = re.compile(r"^trial #(\d+) epoch (\d+)/(\d+): (.*) \(\d+\.\d+s\)$")
#: a head on cached features is one L-BFGS solve: one line, not epochs that repeat its numbers
SOLVE_LINE = re.compile(r"^trial #(\d+) head: one L-BFGS fit, \d+ iterations: (.*) \(\d+\.\d+s\)$")
TRIAL_LINE = re.compile(r"^\[[23]/7\] (baseline|tuning): trial #(\d+) complete in \d+s: val_accuracy=[\d.]+; .*$")


def run_command(images, output, study: str, trials: int = 3) -> list[str]:
    """``automl run`` of the tiny model: a baseline and tuning trials of at most 4 epochs."""
    options = (
        f"--task image_classification --target accuracy>=0 --trials {trials} --backbone {TINY_IMAGE_BACKBONE} "
        "--no-pretrained --epochs 2 --batch-size 4 --image-size 32 --accelerator cpu --pruner none"
    ).split()
    paths = ["--data", str(images), "--output", str(output), "--study", study]
    return [sys.executable, "-m", "automl", "run", *options, *paths]


def logged_lines(run_dir) -> list[str]:
    """``run.log``'s lines without their time stamps."""
    text = (run_dir / RUN_LOG).read_text()
    return [re.sub(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d ", "", line) for line in text.splitlines()]


@pytest.mark.slow
def test_with_stderr_in_a_file_each_epoch_and_trial_is_one_plain_line_also_in_run_log(images, tmp_path):
    """stderr redirected to a file, as `nohup`, CI or a job scheduler do: no live bar's fragments, but
    one line per epoch with its metrics and one per trial; the run folder's run.log has the same."""
    with open(tmp_path / "stderr.txt", "w") as stderr:
        done = subprocess.run(
            run_command(images, tmp_path, "plain"), stdout=subprocess.PIPE, stderr=stderr, text=True, timeout=300
        )
    text = (tmp_path / "stderr.txt").read_text()
    assert done.returncode == 0, text[-3000:]
    assert "\x1b" not in text and "\r" not in text  # no escape sequences, no bar redrawn in place
    lines = text.splitlines()
    assert not [line for line in lines if not line.strip() or line[0].isspace()], text  # no wrapped fragments
    assert "━" not in text and "it/s" not in text

    trials = optuna.load_study(study_name="plain", storage=f"sqlite:///{tmp_path / 'optuna.db'}").trials
    assert [t.state.name for t in trials] == ["COMPLETE"] * 3
    epochs, solves = {}, {}
    for line in lines:
        if found := EPOCH_LINE.match(line):
            number, epoch, total, metrics = found.groups()
            assert re.search(r"\bval_accuracy=[\d.]+\b", metrics) and re.search(r"\btrain_loss=[\d.]+", metrics)
            epochs.setdefault(int(number), []).append((int(epoch), int(total)))
        elif found := SOLVE_LINE.match(line):
            solves[int(found.group(1))] = solves.get(int(found.group(1)), 0) + 1
    for trial in trials:  # each trial's epochs, one line each, counted up to the trial's own number
        if SearchSpace.head_only(trial.params):
            assert solves.get(trial.number) == 1 and trial.number not in epochs, (solves, epochs)
            continue
        last = trial.params["epochs"]
        assert epochs[trial.number][-1] == (last, last), epochs
        assert [e for e, _ in epochs[trial.number]] == list(range(last - len(epochs[trial.number]) + 1, last + 1))
    ended = [int(found.group(2)) for line in lines if (found := TRIAL_LINE.match(line))]
    assert ended == [0, 1, 2], text  # a line per trial, with its score

    logged = logged_lines(tmp_path / "plain")
    progress = [line for line in lines if EPOCH_LINE.match(line) or TRIAL_LINE.match(line)]
    stages = [line for line in lines if line.startswith("[")]
    assert progress and [line for line in logged if line in progress] == progress
    assert [line for line in logged if line in stages] == stages
    assert "[4/7] verdict: val_accuracy" in "\n".join(logged)


@pytest.mark.slow
def test_on_a_terminal_the_live_bar_stays_and_run_log_still_gets_the_lines(images, tmp_path):
    """stderr a terminal (a pseudo-terminal here): Lightning's live bar as before; run.log has the
    epoch and trial lines all the same."""
    import pty

    reader, writer = pty.openpty()
    chunks = []

    def drain() -> None:  # a terminal that nobody reads fills up and blocks the run
        while True:
            try:
                chunk = os.read(reader, 65536)
            except OSError:  # the run ended: its side of the terminal is closed
                return
            if not chunk:
                return
            chunks.append(chunk)

    thread = threading.Thread(target=drain, daemon=True)
    thread.start()
    process = subprocess.Popen(run_command(images, tmp_path, "terminal", 2), stdout=subprocess.PIPE, stderr=writer)
    os.close(writer)
    process.communicate(timeout=300)
    thread.join(timeout=30)
    os.close(reader)
    shown = b"".join(chunks).decode(errors="replace")
    assert process.returncode == 0, shown[-3000:]
    assert "━" in shown and "\x1b[" in shown  # the live bar
    assert not any(EPOCH_LINE.match(line.strip()) for line in shown.splitlines())

    logged = logged_lines(tmp_path / "terminal")
    assert sum(1 for line in logged if EPOCH_LINE.match(line)) >= 2
    assert sum(1 for line in logged if TRIAL_LINE.match(line)) == 2
    assert any(line.startswith("[1/7] inspect:") for line in logged)


def test_a_baseline_that_uses_up_the_budget_says_so_in_the_tuning_line(images, tmp_path, tracking_uri, monkeypatch):
    """The baseline takes the whole budget (the clock jumps by it when the baseline ends): tuning
    starts no trial and its stage line says why, not "1 of 4 trials finished in earlier runs"."""
    real_time, jump = time.time, [0.0]
    monkeypatch.setattr(time, "time", lambda: real_time() + jump[0])
    trial = trainers.Trainers.flash

    def baseline_that_takes_the_budget(job, number, params, callbacks, logger):
        outcome = trial(job, number, params, callbacks, logger)
        if number == 0:
            jump[0] += 60.0
        return outcome

    monkeypatch.setattr(trainers.Trainers, "flash", baseline_that_takes_the_budget)
    lines = []
    config = tiny_run_config(images, tmp_path, tracking_uri=tracking_uri, trials=4, time_budget="60s")
    result = pipeline.run(config, progress=False, report=lines.append)

    (tuning,) = [line for line in lines if line.startswith("[3/7] tuning: ")]
    assert re.fullmatch(
        r"\[3/7\] tuning: no time left after the baseline \(\d+s of the 60s budget spent; "
        r"tuning may use 36s of it, the rest is the escalation's\)",
        tuning,
    ), lines
    (tune,) = [line for line in result.stages if line.stage == "tune"]
    assert tune.note.startswith("no time left after the baseline")
    assert result.met  # the baseline is judged


def test_a_study_whose_trials_are_done_says_who_did_them(images, tmp_path, tracking_uri):
    """A run of one trial: the baseline is all of it, in this run; the same command again finds it done
    in an earlier run."""
    config = tiny_run_config(images, tmp_path, tracking_uri=tracking_uri, trials=1)
    first, again = [], []
    pipeline.run(config, progress=False, report=first.append)
    assert "[3/7] tuning: no new trial: --trials 1 is reached with the baseline" in first, first

    pipeline.run(config, progress=False, report=again.append)
    assert "[3/7] tuning: no new trial: 1 of 1 trials finished in earlier runs or by other workers" in again, again
