"""`rag eval` sub-commands (filled in by the evaluation harness)."""


def add_eval_parser(sub) -> None:
    return None
