"""Post-Training Workbench core: pure Python, never imports streamlit.

The floor plan, ground floor first: a module imports only from its own floor or the floors below it (job packages
-> data / memory -> run protocol -> models -> workspace). tests/test_house.py holds the code to it, and a new
module or package of core must be placed here.
"""

LAYERS: tuple[tuple[str, ...], ...] = (
    ("workspace", "hardware", "locks", "scorers", "embeddings", "llamacpp", "serving"),  # ground: files, machine, runtimes
    ("hub",),  # the Hugging Face Hub
    ("models",),  # the one way a model is loaded
    ("runs",),  # the run folder and the job protocol
    ("data", "memory", "download", "rewards"),  # datasets, masking, curation; memory estimates; downloads; named rewards
    ("generation", "chat"),  # every answer a model gives
    ("train",),
    ("evaluate",),
    ("rag", "compare", "transform_eval", "arena"),  # arena: blind A / B votes into a preference dataset, standings
    ("merge", "prune", "distill", "decide"),
    ("export",),  # the top floor: exports everything below
)
