"""Evaluation: base vs fine-tuned on the task and on general ability, with a forgetting verdict.

- `spec.EvalSpec` — the job spec (kind "evaluate"); `job.run` — the job the worker runs;
- `task` / `general` — the data; `scoring` — model-side numbers; `core.scorers` — string metrics;
- `pairs` — held-out preference pair accuracy (log-prob, per token, implicit reward); `preference` — the report's
  preference section (which pairs, which models);
- `stats` — bootstrap intervals; `verdict` — the rule and the advice; `report` — report.json and exports;
- `charts` — plotly figures for the page;
- `judge` — a local model compares two answers in both orders (win rate, position bias, judge-human agreement);
  `judge_job` — the `judge` job (win rate of model X over Y on an eval set).
"""
