"""Datasets: loading, masking, preference pairs, curation. Every module, ground first:

- `core.data.text`        the text of a normalised row and the normalisation curation compares texts by
- `core.data.templates`   the chat templates the app ships, and the one a tokenizer's special tokens point to
- `core.data.masking`     the one place a conversation becomes `input_ids` + `labels` (trained vs masked tokens)
- `core.data.formats`     load a file, folder or Hub id and normalise every row to one conversational form
- `core.data.preference`  preference pairs (DPO / ORPO / SimPO) and unpaired KTO rows: formats, checks, pair masks
- `core.data.summary`     what a loaded dataset looks like at a glance
- `core.data.lint`        a dataset checked against a chat template before training (masking's silent failures)
- `core.data.render`      HTML and table views of an encoded row for the Template page
- `core.data.highlight`   HTML of matched spans for curation results
- `core.data.dedup`       exact, near (MinHash-LSH) and semantic de-duplication
- `core.data.decontam`    which training rows overlap a benchmark's test items
- `core.data.diversity`   what a dataset covers, and N rows that cover it
- `core.data.audit`       per-row flags on the answers, each with the rule that fired
- `core.data.replay`      general rows mixed into a task's rows against forgetting
- `core.data.curate`      curation results turned into operations and a curated dataset with its manifest
- `core.data.ray_curate`  the same curation on Ray Data
- `core.data.curate_job`  the `curate` job: the Data page's heavy operations in a worker
"""
