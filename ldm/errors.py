"""The one exception type for problems a user can fix (bad file, bad input, missing weights).

Its message is a single line that says what is wrong and what to do. Commands print it as
``error: <message>`` and exit with status 2 instead of showing a traceback.
"""


class UserError(Exception):
    """A problem with the user's input or files, explained in one line."""


def nan_advice(dtype) -> str:
    """What to try when a network produced NaN/inf in `dtype`."""
    name = str(dtype).removeprefix("torch.")
    if name == "float16":
        import torch
        if torch.cuda.is_available() and not torch.cuda.is_bf16_supported(including_emulation=False):
            return "float16 overflows more easily: try --dtype float32 (this GPU has no bfloat16)"
        return "float16 overflows more easily: try --dtype bfloat16 or float32"
    if name == "bfloat16":
        return "try --dtype float32"
    return (f"in {name} this points at the input, not the precision: check the images and the settings "
            "(a --size far from the model's native size, an extreme --cfg)")
