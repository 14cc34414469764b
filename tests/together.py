"""Processes that open one store at the same moment, as workers started together do. Only the
standard library here: a spawned process imports this module first, and no more than its store needs."""

from __future__ import annotations


def _open_at_once(store: str, urls: list[str], barrier, results, artifacts: str) -> None:
    """One process: its imports done, for each of ``urls`` in turn it waits for the others, then all
    open ``store`` there at once. It tells ``results`` its words: "opened", or what went wrong."""
    import traceback
    from pathlib import Path

    words = []
    try:
        if store == "optuna":
            import optuna.storages  # noqa: F401  (imported before the barrier, not after it)
            from test_tuning import SPACE

            from automl import metrics as m
            from automl import tuning

            def opening(url: str):
                return tuning.Tuner(SPACE, url, "together", "maximize", m.VAL_ACCURACY, pruner="none")
        else:
            import mlflow.store.tracking.sqlalchemy_store  # noqa: F401
            import mlflow.tracking  # noqa: F401

            from automl.tracking import Tracker

            def opening(url: str):
                return Tracker(url, Path(artifacts))

        for url in urls:
            barrier.wait(timeout=120)
            try:
                opening(url)
                words.append("opened")
            except Exception:
                words.append(traceback.format_exc())
    except BaseException:  # an import, or the barrier broken by another process's death
        words.append(traceback.format_exc())
    results.put(words)


def open_together(store: str, urls: list[str], artifacts, processes: int = 4) -> list[str]:
    """``processes`` processes open ``store`` ("optuna": a ``Tuner``; "mlflow": a ``Tracker``) on each
    of ``urls`` at the same moment, one URL after the other: every process's word on every URL.
    Whether a start collides with another's table creation is a matter of milliseconds: several
    never-used databases make a collision certain, where one makes it likely."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(processes), context.Queue()
    started = [
        context.Process(target=_open_at_once, args=(store, urls, barrier, results, str(artifacts)))
        for _ in range(processes)
    ]
    for process in started:
        process.start()
    words = [word for _ in started for word in results.get(timeout=300)]
    for process in started:
        process.join(timeout=60)
    return words
