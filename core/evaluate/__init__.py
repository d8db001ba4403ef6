"""Evaluation: base vs fine-tuned on the task and on general ability, with a forgetting verdict.

- `spec.EvalSpec` — the job spec (kind "evaluate"); `job.run` — the job the worker runs;
- `task` / `general` — the data; `scoring` — model-side numbers; `core.scorers` — string metrics;
- `stats` — bootstrap intervals; `verdict` — the rule and the advice; `report` — report.json and exports;
- `charts` — plotly figures for the page.
"""
