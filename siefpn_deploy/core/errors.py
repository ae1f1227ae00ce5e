"""The one exception type the CLI turns into a one-line error (no traceback)."""


class UserError(Exception):
    """Bad input from the user: a file, an argument or a config value.

    The message must name the culprit (the path, the key, the argument) and fit on one line.
    """


def one_line(exc: BaseException) -> str:
    """The user-facing line of an error, also when a DataLoader worker re-raised it with its traceback."""
    text = str(exc).strip()
    if "Original Traceback" in text:  # torch.utils.data wraps worker exceptions with the worker's traceback
        last = text.splitlines()[-1]
        text = last.split(": ", 1)[1] if last.startswith(f"{__name__}.") and ": " in last else last
    return " ".join(text.split()) or type(exc).__name__


class CannotRunHere(UserError):
    """A valid artifact that this machine cannot run (a TensorRT engine without a GPU or a runtime)."""
