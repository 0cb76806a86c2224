"""The VLM's defaults, importable without torch or Lightning (the config reader and the command
line use them; :mod:`bench.vlm.module` re-exports them)."""

DEFAULT_MODEL = "llava-hf/llava-1.5-7b-hf"
#: LoRA on the language model's attention query/value projections only (not the vision tower).
DEFAULT_TARGET_MODULES = r".*language_model.*\.(q_proj|v_proj)"
DEFAULT_QUESTION = ("What would a user type into a sticker search box to find this sticker? "
                    "Answer with a few short keywords separated by commas.")
