"""Measured comparisons of training methods on the user's own model and data.

- `core.compare.features`  the feature-extraction baseline: frozen encoder + logistic-regression head
- `core.compare.spec`      FeatureExtractionSpec, MethodComparisonSpec (YAML file, CLI and form)
- `core.compare.job`       the `feature_extraction` job and the `method_comparison` orchestrator
- `core.compare.table`     the table, the Pareto chart, CSV export and the seed chapter's claimed shares
"""
