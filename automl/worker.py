"""``automl tune``: a tuning worker of a shared study. It holds the search (the data, the stores,
the trial folder), not a run: no journal, no verdict, no report; those are ``automl run``'s."""

from __future__ import annotations

from automl import stages, trial_record
from automl.config import RunConfig
from automl.progress import Report, log_error
from automl.search import enqueue_start, open_search
from automl.stages import NUMBER, STAGES
from automl.trials import TrialLines


def tune_worker(config: RunConfig, progress: bool = True, report: Report | None = None) -> dict:
    """``automl tune``: join (or create) the study in ``config.storage`` and run Flash-tier trials until
    it holds ``config.trials`` finished ones, whoever ran them. Verdict and report are ``automl run``'s.
    A worker holds the search (data, stores, trial folder), not a run: no journal, no stages."""
    from automl.progress import detach_run_log, stage_line
    from automl.shared_study import WORKER
    from automl.tracking import own_tracking_uri

    def say(line: str) -> None:
        stage_line(line)
        (report or (lambda _: None))(line)

    total = len(STAGES)
    with own_tracking_uri():
        try:
            search = open_search(config, progress, say, who=WORKER)
            stop, flash, plan = search.studies.stop, search.flash, search.plan
            stop.install(say)
            try:
                stages.inspect(search.data, lambda text: say(f"[1/{total}] inspect: {text}"))
                enqueue_start(flash, search.data.config, budgeted=plan.budget is not None)
                lines = TrialLines(say, NUMBER["tune"], total, "tuning", search.data.target.metric)
                why = flash.run(search.flash_train, total_trials=config.trials, deadline=plan.deadline, **lines.hooks())
                search.parent.end("FINISHED")
            except BaseException:
                search.parent.end("FAILED")
                raise
            finally:
                stop.uninstall()
        except BaseException as error:
            log_error(error)
            raise
        finally:
            detach_run_log()
    trials = flash.finished_trials()
    best = flash.best_trial()
    return {
        "study": search.studies.name,
        "stopped": why,
        "finished": len(trials),
        "requested": config.trials,
        "by_this_worker": sum(1 for t in trials if t.user_attrs.get(trial_record.WORKER) == WORKER),
        "best_value": best.value if best else None,
        "worker": WORKER,
    }
